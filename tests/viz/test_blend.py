"""The one blending rule behind the MIL heatmap and the review slide viewer."""

from __future__ import annotations

import numpy as np
import pytest

from medcl.mil.heatmap import blend_heatmap as mil_blend
from medcl.review.slide_views import blend_heatmap as review_blend
from medcl.viz.blend import blend_layer


def test_blend_layer_weights_and_rounds_once() -> None:
    image = np.array([[[100, 0, 255], [10, 20, 30]]], dtype=np.uint8)
    colour = np.array([[[200.0, 101.0, 0.0], [0.0, 0.0, 0.0]]])
    out = blend_layer(image, colour, np.array([[0.5, 0.0]]))
    assert out.tolist() == [[[150, 50, 128], [10, 20, 30]]]  # 50.5 -> 50, 127.5 -> 128 (even)
    with pytest.raises(ValueError, match="must match the image"):
        blend_layer(image, colour[:, :1], np.array([[0.5]]))


def test_both_heatmap_views_blend_the_same_way() -> None:
    thumb = np.full((1, 2, 3), 40, dtype=np.uint8)
    scores = np.array([[1.0, np.nan]])
    from_scores = mil_blend(thumb, scores, alpha=0.25, cmap="gray")
    layer = np.zeros((1, 2, 4), dtype=np.uint8)
    layer[0, 0] = (255, 255, 255, 255)  # the same white tile, opaque; no tile on the right
    from_layer = review_blend(thumb, layer, 0.25)
    assert from_scores.tolist() == from_layer.tolist() == [[[94, 94, 94], [40, 40, 40]]]

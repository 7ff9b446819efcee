"""Patch view pipelines: shapes, seeds, exact 90-degree rotations, HED jitter keeps the layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from medcl.transforms.patch_views import (
    HEDJitter,
    Rotate90,
    StainNormalize,
    TwoCropTransform,
    dermoscopy_views,
    eval_transform,
    pathology_views,
    random_rotate90,
)
from medcl.transforms.stain import ReinhardNormalizer


def _patch(seed: int = 0, shape: tuple[int, int] = (40, 48)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(*shape, 3), dtype=np.uint8)


@pytest.mark.parametrize("build", [pathology_views, dermoscopy_views, eval_transform])
@pytest.mark.parametrize("as_pil", [False, True])
def test_output_shape_dtype_and_normalisation(build: object, as_pil: bool) -> None:
    image = _patch()
    view = build(24)  # type: ignore[operator]
    out = view(Image.fromarray(image) if as_pil else image)
    assert out.shape == (3, 24, 24) and out.dtype == torch.float32
    assert type(out) is torch.Tensor or isinstance(out, tv_tensors.Image)


def test_eval_transform_values_are_normalised_pixels() -> None:
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    image[..., 0] = 255
    out = eval_transform(8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 1.0))(image)
    assert torch.allclose(out[:, 0, 0], torch.tensor([1.0, -2.0, -0.5]))


def test_views_are_reproducible_with_torch_seed() -> None:
    image = _patch(1)
    pair = TwoCropTransform(pathology_views(16))
    torch.manual_seed(0)
    a1, a2 = pair(image)
    torch.manual_seed(0)
    b1, b2 = pair(image)
    torch.manual_seed(1)
    c1, _ = pair(image)
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.equal(a1, a2) and not torch.equal(a1, c1)


def test_two_crop_uses_second_view_when_given() -> None:
    pair = TwoCropTransform(eval_transform(8), dermoscopy_views(8))
    first, second = pair(_patch(2))
    assert torch.equal(first, eval_transform(8)(_patch(2))) and second.shape == (3, 8, 8)


def test_rotate90_is_exact_and_all_four_turns_occur() -> None:
    image = torch.arange(2 * 3 * 3, dtype=torch.uint8).reshape(2, 3, 3)  # asymmetric
    assert torch.equal(Rotate90(1)(image)[0], torch.tensor([[2, 5, 8], [1, 4, 7], [0, 3, 6]]))
    rotations = [torch.rot90(image, k, dims=(1, 2)) for k in range(4)]
    seen = set()
    torch.manual_seed(0)
    choice = random_rotate90()
    for _ in range(40):
        out = choice(tv_tensors.Image(image))
        assert isinstance(out, tv_tensors.Image)
        matches = [k for k, r in enumerate(rotations) if torch.equal(out, r)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert seen == {0, 1, 2, 3}


def test_hed_jitter_changes_colour_not_layout() -> None:
    # Two colours in a checkerboard-like layout: jitter maps each colour to one new colour.
    image = np.zeros((12, 10, 3), dtype=np.uint8)
    mask = (np.add.outer(np.arange(12), np.arange(10)) % 3) == 0
    image[mask] = (150, 60, 170)  # eosin-like pink-purple
    image[~mask] = (70, 50, 140)  # haematoxylin-like blue
    torch.manual_seed(0)
    out = HEDJitter(sigma=0.2, bias=0.1)(tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1)))
    assert isinstance(out, tv_tensors.Image) and out.dtype == torch.uint8
    out_np = out.permute(1, 2, 0).numpy()
    assert np.abs(out_np.astype(int) - image).mean() > 2  # the colours moved
    for region in (mask, ~mask):  # every pixel of one input colour gets the same output colour
        assert len(np.unique(out_np[region], axis=0)) == 1
    assert not np.array_equal(out_np[mask][0], out_np[~mask][0])


def test_hed_jitter_is_seeded_by_torch() -> None:
    image = tv_tensors.Image(torch.from_numpy(_patch(3)).permute(2, 0, 1))
    jitter = HEDJitter(0.3, 0.3)
    torch.manual_seed(5)
    a = jitter(image)
    torch.manual_seed(5)
    assert torch.equal(a, jitter(image))
    with pytest.raises(ValueError, match="HEDJitter needs a"):
        jitter(image.float())
    with pytest.raises(ValueError, match="sigma and bias must be >= 0"):
        HEDJitter(sigma=-1.0)


def test_stain_normalisation_comes_first() -> None:
    target = _patch(4)
    normalizer = ReinhardNormalizer().fit(target)
    source = (_patch(5) // 2).astype(np.uint8)
    view = pathology_views(16, stain_normalize=normalizer)
    assert isinstance(view.transforms[0], StainNormalize)
    out = eval_transform(40, stain_normalize=normalizer)(source)
    expected = eval_transform(40)(normalizer(source))
    assert torch.equal(out, expected)
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8 array"):
        StainNormalize(normalizer)(source.astype(np.float32))


def test_bad_size() -> None:
    with pytest.raises(ValueError, match="size must be a positive integer"):
        pathology_views(0)

"""Augmented views: sizes, labels moving with images, aligned local views, seeding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import RandAdjustContrastd, RandBiasFieldd

from medcl.transforms.views import (
    TwoViews,
    geometric_transform,
    global_view_transform,
    intensity_transform,
    local_view_transform,
)

torch.set_num_threads(1)


def _sample(shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """A bright box (value 0.8 on 0.1 background, plus texture) and its label."""
    gen = torch.Generator().manual_seed(0)
    label = torch.zeros(1, *shape)
    box = tuple(slice(s // 4, s // 4 + s // 3) for s in shape)
    label[(slice(None), *box)] = 1.0
    image = 0.1 + 0.7 * label + 0.05 * torch.rand(1, *shape, generator=gen)
    return {"image": image, "label": label}


@pytest.mark.parametrize(
    ("spatial_dims", "shape", "crop"),
    [(2, (40, 36), (32, 32)), (2, (20, 24), (32, 32)), (3, (20, 18, 10), (16, 16, 8))],
)
def test_global_view_sizes_and_labels_follow_images(
    spatial_dims: int, shape: tuple[int, ...], crop: tuple[int, ...]
) -> None:
    views = TwoViews(
        global_view_transform(
            spatial_dims,
            "ct",
            crop,
            flip_prob=1.0,
            affine_prob=1.0,
            elastic_prob=1.0,
            intensity_prob=0.0,
        ),
        seed=3,
    )
    for view in views(_sample(shape)):
        img, lab = view["image"], view["label"]
        assert img.shape == lab.shape == (1, *crop)
        assert set(torch.unique(lab).tolist()) <= {0.0, 1.0}  # nearest-neighbour labels
        # the label still marks the bright box (flips always on: a label left in place would
        # agree on only ~82 % of pixels)
        agree = ((img > 0.45) == (lab > 0.5)).float().mean().item()
        assert agree > 0.95
        assert lab.sum() > 0


def test_local_views_aligned_and_intensity_only() -> None:
    shared = geometric_transform(2, 32, affine_prob=1.0, elastic_prob=1.0)
    views = TwoViews(local_view_transform("mr", prob=1.0), shared=shared, seed=0)
    a, b = views(_sample((40, 36)))
    assert torch.equal(a["label"], b["label"])  # same positions in both views
    assert not torch.allclose(a["image"], b["image"])  # but differently augmented
    for v in (a, b):
        inside = v["image"][v["label"] > 0.5].mean()
        outside = v["image"][v["label"] < 0.5].mean()
        assert inside > outside
    # without noise and bias field the intensity changes are monotone: pixel order is kept
    sample = {"image": torch.rand(1, 12, 12, generator=torch.Generator().manual_seed(1))}
    mono = local_view_transform("mr", prob=1.0, noise_std=0.0, bias=0.0)
    mono.set_random_state(5)
    out = mono(dict(sample))["image"]
    assert not torch.allclose(out, sample["image"])
    assert torch.equal(torch.argsort(out.flatten()), torch.argsort(sample["image"].flatten()))


def test_gamma_step_matches_formula() -> None:
    """Only gamma active: out = ((x - lo) / (hi - lo)) ** g * (hi - lo) + lo, g in range."""
    x = torch.tensor([[[0.2, 0.5], [0.9, 1.4]]], dtype=torch.float64)
    t = intensity_transform("ct", prob=1.0, scale=0.0, shift=0.0, noise_std=0.0, bias=0.0)
    t.set_random_state(11)
    out = t({"image": x.clone()})["image"].as_tensor().double()
    lo, rng = 0.2, 1.2
    g = np.log((out[0, 0, 1].item() - lo) / rng) / np.log((0.5 - lo) / rng)
    assert 0.8 <= g <= 1.25 and abs(g - 1.0) > 1e-3
    ref = ((x - lo) / rng) ** g * rng + lo
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


def test_seeds_reproducible_and_distinct() -> None:
    def run(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        views = TwoViews(global_view_transform(2, "mr", 24, elastic_prob=0.5), seed=seed)
        a, b = views(_sample((32, 32)))
        return a["image"].as_tensor(), b["image"].as_tensor()

    a1, b1 = run(0)
    a2, b2 = run(0)
    a3, _ = run(1)
    assert torch.equal(a1, a2) and torch.equal(b1, b2)
    assert not torch.equal(a1, b1)  # the two views of one call differ
    assert not torch.equal(a1, a3)  # another seed, other views


def test_modality_defaults_and_errors() -> None:
    ct = [type(t) for t in intensity_transform("ct").transforms]
    mr = intensity_transform("mr").transforms
    assert RandBiasFieldd not in ct and any(isinstance(t, RandBiasFieldd) for t in mr)
    ct_gamma = intensity_transform("ct").transforms[0]
    mr_gamma = mr[0]
    assert isinstance(ct_gamma, RandAdjustContrastd) and isinstance(mr_gamma, RandAdjustContrastd)
    assert tuple(ct_gamma.adjuster.gamma) == (0.8, 1.25)
    assert tuple(mr_gamma.adjuster.gamma) == (0.5, 2.0)
    with pytest.raises(ValueError, match="modality must be one of"):
        intensity_transform("pet")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown intensity options"):
        intensity_transform("ct", gama=(1, 2))
    with pytest.raises(ValueError, match="crop_size must be 3 positive sizes"):
        geometric_transform(3, (16, 16))
    with pytest.raises(ValueError, match="flip_prob must be in"):
        geometric_transform(2, 16, flip_prob=1.5)

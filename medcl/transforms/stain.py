"""Stain augmentation and normalisation for H&E patches (pure numpy on ``(H, W, 3)`` RGB).

* :func:`hed_jitter`: random perturbation in haematoxylin-eosin-DAB space (Tellez et al., 2018).
* :class:`MacenkoNormalizer`: stain vectors from optical density (Macenko et al., ISBI 2009).
* :class:`ReinhardNormalizer`: per-channel mean / std matching in LAB (Reinhard et al., 2001).

Every function takes ``uint8`` (0..255) or float (0..1) images and returns the same dtype; the
normalisers are callables (``normalizer(image)``) so they slot into a transform pipeline.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
_EPS = 1e-6  # skimage.color.rgb2hed's floor before the log


def _check_rgb(image: NDArray[Any], name: str = "image") -> None:
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name} must have shape (H, W, 3), got {image.shape}")
    if image.dtype != np.uint8 and not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"{name} must be uint8 or float, got dtype {image.dtype}")


def _to_unit(image: NDArray[Any]) -> FloatArray:
    """RGB in [0, 1] as float64."""
    if image.dtype == np.uint8:
        return image.astype(np.float64) / 255.0
    return np.clip(image.astype(np.float64), 0.0, 1.0)


def _from_unit(rgb: FloatArray, like: NDArray[Any]) -> NDArray[Any]:
    """Back to ``like``'s dtype (uint8 rounded, float clipped to [0, 1])."""
    rgb = np.clip(rgb, 0.0, 1.0)
    if like.dtype == np.uint8:
        return np.round(rgb * 255.0).astype(np.uint8)
    return rgb.astype(like.dtype)


def hed_jitter(
    image: NDArray[Any],
    *,
    sigma: float = 0.03,
    bias: float = 0.03,
    rng: np.random.Generator | int | None = None,
) -> NDArray[Any]:
    """Perturb the stain concentrations of an RGB image in HED space.

    Tellez et al., "Whole-slide mitosis detection in H&E breast histology using PHH3 as a
    reference to train distilled stain-invariant convolutional networks", IEEE TMI 2018. Each
    HED channel becomes ``hed * alpha + beta`` with ``alpha ~ U(1 - sigma, 1 + sigma)`` and
    ``beta ~ U(-bias, bias)`` drawn once per channel (and image).

    Parameters
    ----------
    image : (H, W, 3) ndarray
        RGB, ``uint8`` or float in [0, 1].
    sigma : float
        Half-width of the multiplicative factor's range (>= 0).
    bias : float
        Half-width of the additive shift's range (>= 0).
    rng : numpy Generator, seed or None
        Source of the random factors.

    Returns
    -------
    (H, W, 3) ndarray of ``image``'s dtype, values clipped to the valid range.
    """
    from skimage.color import hed_from_rgb, rgb_from_hed

    _check_rgb(image)
    if sigma < 0 or bias < 0:
        raise ValueError(f"sigma and bias must be >= 0, got {sigma} and {bias}")
    gen = np.random.default_rng(rng)
    alpha = gen.uniform(1.0 - sigma, 1.0 + sigma, size=3)
    beta = gen.uniform(-bias, bias, size=3)
    # skimage.color.rgb2hed / hed2rgb with the same matrices and log scale, but without the
    # clipping of negative stain values in rgb2hed, which makes its round trip lossy for colours
    # outside the H-E-DAB cone (pen marks, saturated pixels): sigma = bias = 0 is the identity.
    log_adjust = np.log(_EPS)
    hed = (np.log(np.maximum(_to_unit(image), _EPS)) / log_adjust) @ hed_from_rgb
    rgb = np.exp(((hed * alpha + beta) * log_adjust) @ rgb_from_hed)
    return _from_unit(rgb, image)


def optical_density(image: NDArray[Any], io: float = 240.0) -> FloatArray:
    """``(H * W, 3)`` optical density ``-log((I + 1) / io)`` of an RGB image (0..255 scale)."""
    rgb = _to_unit(image).reshape(-1, 3) * 255.0
    return np.maximum(-np.log((rgb + 1.0) / io), 0.0)


class MacenkoNormalizer:
    """Stain normalisation of Macenko et al., "A method for normalizing histology slides for
    quantitative analysis", ISBI 2009.

    ``fit`` estimates the target's two stain vectors (haematoxylin first) and the 99th percentile
    of their concentrations; ``transform`` estimates the source's, rescales its concentrations to
    the target's maxima and rebuilds the image with the target's stain vectors.

    Args:
        io: transmitted light intensity (the background's brightness, 0..255).
        beta: optical-density threshold; pixels with any channel below it are background and do
            not enter the stain estimate.
        alpha: percentile (in %) of the angles taken as the extreme stain directions (robust
            minimum and maximum).
        max_percentile: percentile of the concentrations taken as their maximum.
        min_tissue_pixels: fewer tissue pixels than this raise ``ValueError``.
    """

    def __init__(
        self,
        io: float = 240.0,
        beta: float = 0.15,
        alpha: float = 1.0,
        max_percentile: float = 99.0,
        min_tissue_pixels: int = 10,
    ) -> None:
        if io <= 0 or beta < 0:
            raise ValueError(f"io must be > 0 and beta >= 0, got {io} and {beta}")
        if not 0 <= alpha < 50 or not 0 < max_percentile <= 100:
            raise ValueError(
                f"alpha must be in [0, 50) and max_percentile in (0, 100], "
                f"got {alpha} and {max_percentile}"
            )
        self.io, self.beta, self.alpha = float(io), float(beta), float(alpha)
        self.max_percentile = float(max_percentile)
        self.min_tissue_pixels = int(min_tissue_pixels)
        self.stain_matrix_: FloatArray | None = None
        self.max_concentrations_: FloatArray | None = None

    def stain_matrix(self, image: NDArray[Any]) -> FloatArray:
        """``(3, 2)`` unit stain vectors (columns: haematoxylin, eosin) of an RGB image."""
        _check_rgb(image)
        od = optical_density(image, self.io)
        tissue = od[np.all(od >= self.beta, axis=1)]
        if tissue.shape[0] < self.min_tissue_pixels:
            raise ValueError(
                f"no tissue to estimate stains from: {tissue.shape[0]} pixels have optical "
                f"density >= beta={self.beta} in every channel (need {self.min_tissue_pixels}); "
                "is the image background only?"
            )
        _, vecs = np.linalg.eigh(np.cov(tissue, rowvar=False))
        plane = vecs[:, 1:3]  # the two largest eigenvalues' eigenvectors (ascending order)
        plane = plane * np.where(plane.sum(axis=0) < 0, -1.0, 1.0)  # point into positive OD
        proj = tissue @ plane
        phi = np.arctan2(proj[:, 1], proj[:, 0])
        lo, hi = np.percentile(phi, [self.alpha, 100.0 - self.alpha])
        v_lo = plane @ np.array([np.cos(lo), np.sin(lo)])
        v_hi = plane @ np.array([np.cos(hi), np.sin(hi)])
        # Haematoxylin absorbs red most: the vector with the larger red OD comes first.
        stains = np.stack([v_lo, v_hi] if v_lo[0] > v_hi[0] else [v_hi, v_lo], axis=1)
        stains = stains * np.where(stains.sum(axis=0) < 0, -1.0, 1.0)
        return np.asarray(stains / np.linalg.norm(stains, axis=0), dtype=np.float64)

    def concentrations(self, image: NDArray[Any], stains: FloatArray) -> FloatArray:
        """``(H * W, 2)`` least-squares stain concentrations of every pixel."""
        od = optical_density(image, self.io)
        conc, *_ = np.linalg.lstsq(stains, od.T, rcond=None)
        return np.asarray(conc.T, dtype=np.float64)

    def fit(self, target: NDArray[Any]) -> MacenkoNormalizer:
        """Estimate the target's stain matrix and maximum concentrations; returns ``self``."""
        self.stain_matrix_ = self.stain_matrix(target)
        conc = self.concentrations(target, self.stain_matrix_)
        self.max_concentrations_ = np.percentile(conc, self.max_percentile, axis=0)
        return self

    def transform(self, image: NDArray[Any]) -> NDArray[Any]:
        """``image`` (H, W, 3) rendered with the target's stains, in ``image``'s dtype."""
        if self.stain_matrix_ is None or self.max_concentrations_ is None:
            raise ValueError("MacenkoNormalizer is not fitted: call fit(target) first")
        stains = self.stain_matrix(image)
        conc = self.concentrations(image, stains)
        source_max = np.maximum(np.percentile(conc, self.max_percentile, axis=0), 1e-6)
        conc = conc * (self.max_concentrations_ / source_max)
        rgb = self.io * np.exp(-conc @ self.stain_matrix_.T) / 255.0
        return _from_unit(rgb.reshape(image.shape), image)

    def __call__(self, image: NDArray[Any]) -> NDArray[Any]:
        return self.transform(image)


class ReinhardNormalizer:
    """Colour transfer of Reinhard et al., "Color transfer between images", IEEE CG&A 2001.

    Each LAB channel of the source is standardised and given the target's mean and standard
    deviation (``skimage.color.rgb2lab`` / ``lab2rgb``, D65).
    """

    def __init__(self) -> None:
        self.mean_: FloatArray | None = None
        self.std_: FloatArray | None = None

    @staticmethod
    def lab_stats(image: NDArray[Any]) -> tuple[FloatArray, FloatArray]:
        """Per-channel LAB mean and standard deviation, both ``(3,)``."""
        from skimage.color import rgb2lab

        _check_rgb(image)
        lab = rgb2lab(_to_unit(image)).reshape(-1, 3)
        return lab.mean(axis=0), lab.std(axis=0)

    def fit(self, target: NDArray[Any]) -> ReinhardNormalizer:
        """Store the target's LAB mean and std; returns ``self``."""
        self.mean_, self.std_ = self.lab_stats(target)
        return self

    def transform(self, image: NDArray[Any]) -> NDArray[Any]:
        """``image`` (H, W, 3) with the target's LAB statistics, in ``image``'s dtype."""
        from skimage.color import lab2rgb, rgb2lab

        if self.mean_ is None or self.std_ is None:
            raise ValueError("ReinhardNormalizer is not fitted: call fit(target) first")
        _check_rgb(image)
        lab = rgb2lab(_to_unit(image))
        mean = lab.reshape(-1, 3).mean(axis=0)
        std = np.maximum(lab.reshape(-1, 3).std(axis=0), 1e-6)
        lab = (lab - mean) / std * self.std_ + self.mean_
        with warnings.catch_warnings():
            # Out-of-gamut LAB values are clipped on the way back to RGB, as intended.
            warnings.filterwarnings("ignore", message=".*negative Z values", category=UserWarning)
            rgb = lab2rgb(lab)
        return _from_unit(rgb, image)

    def __call__(self, image: NDArray[Any]) -> NDArray[Any]:
        return self.transform(image)

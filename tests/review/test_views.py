"""Rendering logic of the review pages, checked against hand-computed pixels."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medcl.errors import InvalidInputError
from medcl.review import views


def _volume() -> tuple[np.ndarray, np.ndarray]:
    image = np.zeros((4, 5, 3), dtype=np.float32)
    image[..., :] = np.arange(4)[:, None, None] * 10.0  # varies along X only
    mask = np.zeros((4, 5, 3), dtype=np.uint8)
    mask[0, 1, 2] = 1  # x=0 (leftmost), y=1, z=2
    mask[3, 4, 2] = 2  # x=3 (rightmost), y=4 (most anterior), z=2
    return image, mask


def test_plane_slice_orientation() -> None:
    arr = np.arange(4 * 5 * 3).reshape(4, 5, 3)
    ax = views.plane_slice(arr, "axial", 2)
    assert ax.shape == (5, 4)
    # top-left pixel: most anterior row (y=4), patient's right column (x=3)
    assert ax[0, 0] == arr[3, 4, 2]
    assert ax[4, 3] == arr[0, 0, 2]
    cor = views.plane_slice(arr, "coronal", 1)
    assert cor.shape == (3, 4) and cor[0, 0] == arr[3, 1, 2]  # superior row, right column
    sag = views.plane_slice(arr, "sagittal", 0)
    assert sag.shape == (3, 5) and sag[0, 0] == arr[0, 4, 2]  # superior row, anterior column
    with pytest.raises(ValueError, match=r"axial slice 3 out of range 0\.\.2"):
        views.plane_slice(arr, "axial", 3)


def test_overlay_colours_at_known_voxels() -> None:
    image, mask = _volume()
    rgb = views.render_volume_slice(image, mask, "axial", 2, window=(0.0, 30.0), opacity=0.5)
    assert rgb.shape == (5, 4, 3) and rgb.dtype == np.uint8
    # class 2 at x=3,y=4 -> row 0, column 0; grey value 30 -> 255
    red, green, blue = views.PALETTE[1]
    assert rgb[0, 0].tolist() == [
        round(0.5 * 255 + 0.5 * red),
        round(0.5 * 255 + 0.5 * green),
        round(0.5 * 255 + 0.5 * blue),
    ]
    # class 1 at x=0,y=1 -> row 3, column 3; grey value 0
    assert rgb[3, 3].tolist() == [round(0.5 * v) for v in views.PALETTE[0]]
    # an unlabelled voxel (x=1 -> column 2, grey 10/30*255 = 85) keeps its grey value
    assert rgb[2, 2].tolist() == [85, 85, 85]


def test_opacity_zero_leaves_image_and_toggle_hides_class() -> None:
    image, mask = _volume()
    plain = views.render_volume_slice(image, None, "axial", 2, window=(0.0, 30.0))
    clear = views.render_volume_slice(image, mask, "axial", 2, window=(0.0, 30.0), opacity=0.0)
    assert np.array_equal(plain, clear)
    only2 = views.render_volume_slice(
        image, mask, "axial", 2, window=(0.0, 30.0), opacity=1.0, visible={2}
    )
    assert only2[3, 3].tolist() == [0, 0, 0]  # class 1 toggled off: the grey pixel
    assert only2[0, 0].tolist() == list(views.PALETTE[1])  # opacity 1 paints the colour
    with pytest.raises(ValueError, match=r"opacity must be in \[0, 1\], got 1.5"):
        views.overlay_mask(np.zeros((2, 2), np.uint8), None, opacity=1.5)


def test_aspect_repeats_rows() -> None:
    image, mask = _volume()
    rgb = views.render_volume_slice(image, mask, "coronal", 0, window=(0, 30), aspect=2.0)
    assert rgb.shape == (6, 4, 3)
    assert np.array_equal(rgb[0], rgb[1])
    assert views.plane_aspect((1.0, 2.0, 3.0), "axial") == 2.0
    assert views.plane_aspect((1.0, 2.0, 3.0), "sagittal") == 1.5


def test_dice_rows_names_and_missing_class() -> None:
    pred = np.array([[0, 1, 1, 2]])
    truth = np.array([[0, 1, 2, 2]])
    rows = views.dice_rows(pred, truth, {"1": "liver", "3": "spleen"})
    assert rows == [
        {"class": 1, "name": "liver", "dice": pytest.approx(2 / 3)},
        {"class": 2, "name": "class 2", "dice": pytest.approx(2 / 3)},
        {"class": 3, "name": "spleen", "dice": None},
    ]


def test_load_volume_case_reorients_to_ras(tmp_path: Path) -> None:
    data = np.zeros((3, 4, 2), dtype=np.float32)
    data[0, 0, 0] = 7.0  # stored first voxel
    lab = (data > 0).astype(np.uint8)
    affine = np.diag([-2.0, 1.0, 3.0, 1.0])  # first axis runs right -> left (L), spacing 2
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "x.nii.gz")
    nib.save(nib.Nifti1Image(lab, affine), tmp_path / "m.nii.gz")
    case = views.load_volume_case(tmp_path / "x.nii.gz", tmp_path / "m.nii.gz")
    assert case.image.shape == (3, 4, 2) and case.spacing == (2.0, 1.0, 3.0)
    assert case.image[2, 0, 0] == 7.0 and case.mask[2, 0, 0] == 1  # flipped along x
    assert case.ground_truth is None


def test_load_rgb_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(InvalidInputError, match=r"bad\.png: cannot read image"):
        views.load_rgb(bad)
    Image.new("RGB", (40, 20), (1, 2, 3)).save(tmp_path / "ok.png")
    assert views.load_rgb(tmp_path / "ok.png", max_size=10).shape == (5, 10, 3)


def test_demonstration_rows_sorted_with_truth() -> None:
    demos = [
        {"path": "/x/a.jpg", "label": "nv", "similarity": 0.5, "domain": "trunk"},
        {"path": "/x/b.jpg", "label": "mel", "similarity": 0.8312, "domain": None},
    ]
    rows = views.demonstration_rows(demos, "mel")
    assert rows == [
        {
            "rank": 1,
            "label": "mel",
            "similarity": 0.831,
            "domain": "",
            "file": "b.jpg",
            "same_as_truth": True,
        },
        {
            "rank": 2,
            "label": "nv",
            "similarity": 0.5,
            "domain": "trunk",
            "file": "a.jpg",
            "same_as_truth": False,
        },
    ]
    assert views.demonstration_rows(demos)[0]["same_as_truth"] is None


def test_enlarge_repeats_pixels_by_integer_factor() -> None:
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    big = views.enlarge(rgb, 7)  # longer edge 3 -> factor 3
    assert big.shape == (6, 9, 3)
    assert np.array_equal(big[::3, ::3], rgb) and np.array_equal(big[2, 8], rgb[0, 2])
    assert views.enlarge(rgb, 3) is rgb


def test_window_presets_by_modality_and_level_arithmetic() -> None:
    assert views.window_from_level(400, 40) == (-160.0, 240.0)  # CT soft tissue
    assert views.window_from_level(1500, -600) == (-1350.0, 150.0)  # CT lung
    assert views.window_from_level(1800, 400) == (-500.0, 1300.0)  # CT bone
    assert views.level_of((-160.0, 240.0)) == (400.0, 40.0)
    with pytest.raises(ValueError, match="window width must be positive, got 0"):
        views.window_from_level(0, 40)
    ct = [p.name for p in views.window_presets("CT")]
    assert ct[:3] == [
        "CT soft tissue (W400 / L40)",
        "CT lung (W1500 / L-600)",
        "CT bone (W1800 / L400)",
    ]
    mr = [p.name for p in views.window_presets("MR")]
    assert mr == ["percentiles 0.5-99.5", "percentiles 1-99"]  # no HU windows for MR
    assert [p.name for p in views.window_presets(None)][:2] == mr
    assert views.modality_of("mri") == "MR" and views.modality_of(" ct ") == "CT"
    assert views.modality_of("PET") is None and views.modality_of(None) is None


def test_percentile_preset_window_on_known_values() -> None:
    values = np.arange(101, dtype=np.float64).reshape(1, 1, 101)  # 0..100: percentile p = p
    one_99 = next(p for p in views.PERCENTILE_PRESETS if p.percentiles == (1.0, 99.0))
    assert views.preset_window(one_99, values) == pytest.approx((1.0, 99.0))
    assert views.preset_window(views.CT_PRESETS[0], values) == (-160.0, 240.0)
    # a soft-tissue window maps 40 HU to mid grey, -160 and below to black, 240+ to white
    grey = views.to_gray_uint8(np.array([-1000.0, -160.0, 40.0, 240.0, 1000.0]), (-160.0, 240.0))
    assert grey.tolist() == [0, 0, 128, 255, 255]


def test_aspect_resampling_keeps_the_finer_axis() -> None:
    # a coronal slice of a 30-slice volume with 5 mm slices and 1 mm pixels: rows stretched x5
    assert views.aspect_shape((30, 120), 5.0) == (150, 120)
    # rows finer than columns: columns stretched, rows kept (never shrink the image)
    assert views.aspect_shape((100, 40), 0.5) == (100, 80)
    assert views.aspect_shape((30, 120), 1.0) == (30, 120)
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    wide = views.resample_aspect(rgb, 0.5)
    assert wide.shape == (2, 6, 3) and np.array_equal(wide[:, ::2], rgb)
    with pytest.raises(ValueError, match="aspect must be positive"):
        views.aspect_shape((2, 2), 0.0)
    # through the whole rendering: 1.5 x 1.5 x 3 mm voxels -> coronal rows doubled
    image, mask = _volume()
    aspect = views.plane_aspect((1.5, 1.5, 3.0), "coronal")
    out = views.render_volume_slice(image, mask, "coronal", 0, window=(0, 30), aspect=aspect)
    assert out.shape == (6, 4, 3)


def test_legend_lists_only_visible_classes() -> None:
    names = {1: "liver", 2: "spleen", 3: "kidney"}
    assert views.legend_items(names, {3, 1}) == [
        (1, "liver", views.PALETTE[0]),
        (3, "kidney", views.PALETTE[2]),
    ]
    assert views.legend_items(names, set()) == []
    assert views.legend_items(names, {7}) == []  # a class not in the case is never listed

"""read_image, ImageSet, manifests and ImageSetDataset on tiny images made in tmp_path."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medcl.errors import InvalidInputError
from medcl.io.images import (
    IMAGE_SETS,
    ImageSet,
    ImageSetDataset,
    detect_format,
    load_image_set,
    read_image,
)


def _save(path: Path, width: int = 8, height: int = 6, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return arr


@pytest.fixture()
def manifest(tmp_path: Path) -> Path:
    """A manifest with 6 PNGs, 3 classes, 2 domains, 4 groups and a metadata column."""
    rows = []
    spec = [
        ("a", "h1", "p1"),
        ("a", "h1", "p1"),
        ("b", "h1", "p2"),
        ("b", "h2", "p3"),
        ("c", "h2", "p4"),
        ("c", "h2", "p4"),
    ]
    for i, (label, domain, group) in enumerate(spec):
        _save(tmp_path / "imgs" / f"im{i}.png", seed=i)
        rows.append(f"imgs/im{i}.png,{label},{domain},{group},{40 + i}")
    path = tmp_path / "set.csv"
    path.write_text("path,label,domain,group,age\n" + "\n".join(rows) + "\n")
    return path


# ---------------------------------------------------------------- read_image


def test_read_image_png_values_and_shape(tmp_path: Path) -> None:
    ref = _save(tmp_path / "x.png", width=5, height=3)
    out = read_image(tmp_path / "x.png", expected_size=(5, 3))
    assert out.shape == (3, 5, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, ref)
    assert read_image(tmp_path / "x.png", mode="L").shape == (3, 5)


def test_read_image_missing_and_empty(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"nope\.png: image file not found"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(InvalidInputError, match=r"empty\.jpg: image file is empty \(0 bytes\)"):
        read_image(tmp_path / "empty.jpg")


def test_read_image_text_file_named_jpg(tmp_path: Path) -> None:
    (tmp_path / "notes.jpg").write_text("this is not an image\n")
    with pytest.raises(InvalidInputError, match=r"notes\.jpg: cannot identify image file"):
        read_image(tmp_path / "notes.jpg")


def test_read_image_truncated_jpeg(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "ok.jpg")
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidInputError, match=r"cut\.jpg: image is truncated or corrupt"):
        read_image(tmp_path / "cut.jpg")


def test_read_image_wrong_size(tmp_path: Path) -> None:
    _save(tmp_path / "small.png", width=100, height=80)
    with pytest.raises(InvalidInputError, match=r"small\.png: image is 100x80, expected 200x150"):
        read_image(tmp_path / "small.png", expected_size=(200, 150))


# ---------------------------------------------------------------- ImageSet


def test_manifest_reads_columns_counts_and_labels(manifest: Path) -> None:
    ds = ImageSet.from_manifest(manifest)
    assert len(ds) == 6 and ds.name == "set"
    assert ds.class_map == {"a": 0, "b": 1, "c": 2}
    np.testing.assert_array_equal(ds.labels, [0, 0, 1, 1, 2, 2])
    assert ds.class_counts() == {"a": 2, "b": 2, "c": 2}
    assert ds.domain_counts() == {"h1": 3, "h2": 3}
    assert ds.group_counts() == {"p1": 2, "p2": 1, "p3": 1, "p4": 2}
    assert Path(ds.df["path"][0]) == manifest.parent / "imgs" / "im0.png"
    assert ds.records()[3]["age"] == "43"


def test_manifest_round_trip(manifest: Path, tmp_path: Path) -> None:
    ds = ImageSet.from_manifest(manifest)
    out = ds.to_manifest(tmp_path / "copy.csv")
    text = out.read_text().splitlines()
    assert text[0] == "path,label,domain,group,age"
    assert text[1].startswith("imgs/im0.png,a,h1,p1,40")  # written relative to its folder
    back = ImageSet.from_manifest(out)
    pd.testing.assert_frame_equal(back.df, ds.df)
    assert back.class_map == ds.class_map
    # written elsewhere: paths outside the manifest's folder become absolute
    other = ds.to_manifest(tmp_path / "sub" / "m.csv")
    assert ImageSet.from_manifest(other).df["path"].tolist() == ds.df["path"].tolist()


def test_manifest_defaults_domain_and_group(tmp_path: Path) -> None:
    _save(tmp_path / "x.png")
    (tmp_path / "m.csv").write_text("path,label\nx.png,cat\n")
    ds = ImageSet.from_manifest(tmp_path / "m.csv")
    assert ds.df["domain"].tolist() == ["default"] and ds.df["group"].tolist() == ["x.png"]


def test_manifest_missing_column(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("file,label\nx.png,a\n")
    with pytest.raises(
        InvalidInputError, match=r"m\.csv: manifest lacks required column\(s\) path"
    ):
        ImageSet.from_manifest(tmp_path / "m.csv")


def test_manifest_empty_and_header_only(tmp_path: Path) -> None:
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(InvalidInputError, match=r"e\.csv: manifest is empty"):
        ImageSet.from_manifest(tmp_path / "e.csv")
    (tmp_path / "h.csv").write_text("path,label\n")
    with pytest.raises(InvalidInputError, match=r"h\.csv: manifest has a header but no rows"):
        ImageSet.from_manifest(tmp_path / "h.csv")


def test_manifest_unreadable_csv(tmp_path: Path) -> None:
    (tmp_path / "bin.csv").write_bytes(b"path,label\n\xff\xfe\x00bad,\x80\n")
    with pytest.raises(InvalidInputError, match=r"bin\.csv: cannot read the manifest as CSV"):
        ImageSet.from_manifest(tmp_path / "bin.csv")


def test_manifest_missing_file_names_the_row(manifest: Path) -> None:
    (manifest.parent / "imgs" / "im2.png").unlink()
    with pytest.raises(InvalidInputError) as info:
        ImageSet.from_manifest(manifest)
    assert str(info.value).startswith(f"{manifest}: row 3: image file not found: ")
    assert str(info.value).endswith("im2.png")
    assert len(ImageSet.from_manifest(manifest, check_files=False)) == 6


def test_manifest_several_missing_files_counted(manifest: Path) -> None:
    for i in (1, 4):
        (manifest.parent / "imgs" / f"im{i}.png").unlink()
    msg = r"set\.csv: 2 of 6 image files are unusable: row 2: im1\.png .*row 5: im4\.png"
    with pytest.raises(InvalidInputError, match=msg):
        ImageSet.from_manifest(manifest)


def test_manifest_path_escaping_root_is_refused(tmp_path: Path) -> None:
    _save(tmp_path / "secret.png")
    data = tmp_path / "data"
    data.mkdir()
    _save(data / "ok.png")
    (data / "m.csv").write_text("path,label\nok.png,a\n../secret.png,b\n")
    with pytest.raises(InvalidInputError, match=r"m\.csv: row 2: path '\.\./secret\.png' leaves"):
        ImageSet.from_manifest(data / "m.csv", root=data)
    (data / "abs.csv").write_text(f"path,label\n{tmp_path / 'secret.png'},a\n")
    with pytest.raises(InvalidInputError, match=r"abs\.csv: row 1: path .* leaves the root"):
        ImageSet.from_manifest(data / "abs.csv", root=data)
    # without an explicit root the manifest's folder is a base only, not a fence
    assert len(ImageSet.from_manifest(data / "m.csv")) == 2


def test_manifest_duplicate_rows(tmp_path: Path) -> None:
    _save(tmp_path / "x.png")
    (tmp_path / "m.csv").write_text("path,label\nx.png,a\n./x.png,b\n")
    with pytest.raises(InvalidInputError, match=r"m\.csv: rows 1 and 2 list the same image file"):
        ImageSet.from_manifest(tmp_path / "m.csv")


def test_manifest_empty_label(tmp_path: Path) -> None:
    _save(tmp_path / "x.png")
    (tmp_path / "m.csv").write_text("path,label\nx.png,\n")
    with pytest.raises(InvalidInputError, match=r"m\.csv: row 1: empty label"):
        ImageSet.from_manifest(tmp_path / "m.csv")


def test_filter_keeps_class_map_and_rejects_unknown(manifest: Path) -> None:
    ds = ImageSet.from_manifest(manifest)
    h2 = ds.filter(domains=["h2"])
    assert len(h2) == 3 and h2.class_map == ds.class_map
    np.testing.assert_array_equal(h2.labels, [1, 2, 2])
    assert h2.class_counts() == {"a": 0, "b": 1, "c": 2}
    assert len(ds.filter(exclude_domains=["h2"], labels=["a"])) == 2
    with pytest.raises(InvalidInputError, match=r"unknown domain\(s\) h3; known: h1, h2"):
        ds.filter(domains=["h3"])


def test_subset_by_index_and_mask(manifest: Path) -> None:
    ds = ImageSet.from_manifest(manifest)
    sub = ds.subset([5, 0])
    assert sub.df["group"].tolist() == ["p4", "p1"] and sub.labels.tolist() == [2, 0]
    mask = ds.labels == 1
    assert ds.subset(mask).df["path"].tolist() == ds.df["path"][mask].tolist()


def test_with_class_map_missing_class(manifest: Path) -> None:
    ds = ImageSet.from_manifest(manifest)
    with pytest.raises(InvalidInputError, match=r"labels not in the class map: b, c"):
        ds.with_class_map({"a": 0})
    kept = ds.with_class_map({"c": 0, "a": 1}, drop_unmapped=True)
    assert len(kept) == 4 and kept.labels.tolist() == [1, 1, 0, 0]
    with pytest.raises(InvalidInputError, match="labels not in the class map: c"):
        ImageSet.from_manifest(manifest, class_map={"a": 0, "b": 1})


def test_remap_labels_merges_classes(manifest: Path) -> None:
    ds = ImageSet.from_manifest(manifest)
    merged = ds.remap_labels({"a": "bad", "b": "bad"})
    assert merged.class_map == {"bad": 0, "c": 1}
    assert merged.class_counts() == {"bad": 4, "c": 2}
    assert ds.class_counts() == {"a": 2, "b": 2, "c": 2}  # the original is untouched


def test_validate_files_reports_count_and_decode_errors(manifest: Path) -> None:
    ds = ImageSet.from_manifest(manifest)
    ds.validate_files(check_decode=True)
    (manifest.parent / "imgs" / "im1.png").write_text("garbage")
    ds.validate_files()  # exists: fine without decoding
    with pytest.raises(InvalidInputError, match=r"row 2: cannot identify image file.*im1\.png"):
        ds.validate_files(check_decode=True)


def test_dataset_items_and_transform(manifest: Path) -> None:
    ds = ImageSet.from_manifest(manifest)
    data = ImageSetDataset(ds)
    image, label = data[3]
    assert len(data) == 6 and label == 1
    assert image.shape == (3, 6, 8) and image.dtype == torch.float32
    ref = np.array(Image.open(manifest.parent / "imgs" / "im3.png"))
    torch.testing.assert_close(image, torch.from_numpy(ref).permute(2, 0, 1).float() / 255)
    flipped, _ = ImageSetDataset(ds, transform=lambda t: t.flip(-1))[3]
    torch.testing.assert_close(flipped, image.flip(-1))


def test_dataset_read_error_names_file(manifest: Path) -> None:
    ds = ImageSet.from_manifest(manifest)
    with pytest.raises(InvalidInputError, match=r"im0\.png: image is 8x6, expected 4x4"):
        ImageSetDataset(ds, expected_size=(4, 4))[0]


def test_registry_and_format_detection(manifest: Path, tmp_path: Path) -> None:
    assert load_image_set(manifest).class_map == {"a": 0, "b": 1, "c": 2}
    assert {"manifest", "ham10000", "camelyon17", "class_folders"} <= set(IMAGE_SETS.names())
    assert detect_format(manifest) == "manifest"
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(InvalidInputError, match=re.escape("not a recognised image set layout")):
        load_image_set(tmp_path / "empty_dir")
    with pytest.raises(InvalidInputError, match=r"nothing: no such file or folder"):
        load_image_set(tmp_path / "nothing")
    with pytest.raises(ValueError, match="unknown image set format 'zip'"):
        load_image_set(manifest, format="zip")


# A whole image-set adapter: one module with its registration, as a new dataset would add to
# medcl/io/datasets/. It reads ``labels.txt`` ("<file> <label>" per line) beside the images.
_TINY_ADAPTER = """
from pathlib import Path

import pandas as pd

from medcl.io.images import IMAGE_SETS, ImageSet


@IMAGE_SETS.register(
    "tiny_list",
    recognise=lambda p: (p / "labels.txt").is_file(),
    describe="a tiny-list folder (labels.txt)",
    priority=5,
)
def load_tiny_list(root, **kwargs):
    root = Path(root)
    rows = [line.split() for line in (root / "labels.txt").read_text().splitlines() if line]
    df = pd.DataFrame(
        {"path": [str(root / f) for f, _ in rows], "label": [lab for _, lab in rows],
         "domain": "default", "group": [f for f, _ in rows]}
    )
    return ImageSet(df, root=root, name="tiny", **kwargs)
"""


def test_a_new_adapter_is_one_module_and_its_registration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    import medcl.io.datasets

    folder = tmp_path / "tiny"
    _save(folder / "x.png", seed=1)
    _save(folder / "y.png", seed=2)
    (folder / "labels.txt").write_text("x.png cat\ny.png dog\n")
    with pytest.raises(InvalidInputError, match="not a recognised image set layout"):
        detect_format(folder)  # before the adapter exists

    (tmp_path / "modules").mkdir()
    (tmp_path / "modules" / "medcl_tiny_adapter.py").write_text(_TINY_ADAPTER)
    monkeypatch.syspath_prepend(str(tmp_path / "modules"))
    modules = (*medcl.io.datasets.IMAGE_SET_MODULES, "medcl_tiny_adapter")
    monkeypatch.setattr(medcl.io.datasets, "IMAGE_SET_MODULES", modules)
    try:
        assert detect_format(folder) == "tiny_list"
        ds = load_image_set(folder)
        assert ds.name == "tiny"
        assert ds.class_map == {"cat": 0, "dog": 1}
        assert ds.labels.tolist() == [0, 1]
        assert [Path(p).name for p in ds.df["path"]] == ["x.png", "y.png"]
        assert load_image_set(
            folder, format="tiny_list", class_map={"dog": 0, "cat": 1}
        ).labels.tolist() == [1, 0]
        assert "a tiny-list folder (labels.txt)" in IMAGE_SETS.layouts()
        # the specific layouts are still asked before the generic class folders
        assert detect_format(_class_folders(tmp_path)) == "class_folders"
    finally:
        IMAGE_SETS.unregister("tiny_list")
        sys.modules.pop("medcl_tiny_adapter", None)
    monkeypatch.setattr(medcl.io.datasets, "IMAGE_SET_MODULES", modules[:-1])
    assert "tiny_list" not in IMAGE_SETS
    with pytest.raises(InvalidInputError, match="not a recognised image set layout"):
        detect_format(folder)


def _class_folders(tmp_path: Path) -> Path:
    """``root/<class>/*.png``: two class folders."""
    root = tmp_path / "classes"
    _save(root / "cat" / "a.png", seed=3)
    _save(root / "dog" / "b.png", seed=4)
    return root


def test_detection_asks_specific_layouts_before_class_folders(tmp_path: Path) -> None:
    # a HAM10000 folder also holds images in sub-folders; its metadata file decides
    _save(tmp_path / "HAM10000_images_part_1" / "ISIC_0000000.jpg")
    (tmp_path / "HAM10000_metadata.csv").write_text("lesion_id,image_id,dx\n")
    assert detect_format(tmp_path) == "ham10000"
    assert IMAGE_SETS.layouts().split("; ")[0] == "a manifest .csv (path,label[,domain][,group])"
    assert IMAGE_SETS.layouts().split("; ")[-1] == "a folder of class sub-folders"
    with pytest.raises(ValueError, match="unknown image set format 'nope'"):
        IMAGE_SETS.unregister("nope")

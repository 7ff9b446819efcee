"""Dataset adapters (HAM10000 on the real data; Camelyon17-WILDS and class folders on fixtures)
and the image-set preview."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medcl.errors import InvalidInputError
from medcl.io.datasets.camelyon17 import load_camelyon17, patch_relpath
from medcl.io.datasets.class_folders import load_class_folders
from medcl.io.datasets.ham10000 import load_ham10000
from medcl.io.images import ImageSet, detect_format, load_image_set, read_image
from medcl.io.splits import check_no_leak, group_split
from medcl.viz.images import describe_image_set, render_image_grid

HAM_CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]


def _png(path: Path, color: tuple[int, int, int] = (10, 200, 30), size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), color, dtype=np.uint8)).save(path)


# ---------------------------------------------------------------- HAM10000 (real data)


@pytest.fixture(scope="module")
def ham_root(data_root: Path) -> Path:
    root = data_root / "ham10000"
    if not (root / "HAM10000_metadata.csv").is_file():
        pytest.skip(f"HAM10000 not found under {root}")
    return root


@pytest.fixture(scope="module")
def ham_rows(ham_root: Path) -> list[dict[str, str]]:
    with (ham_root / "HAM10000_metadata.csv").open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def ham(ham_root: Path) -> ImageSet:
    return load_image_set(ham_root)


@pytest.mark.realdata
def test_ham10000_counts_match_csv(ham: ImageSet, ham_rows: list[dict[str, str]]) -> None:
    assert len(ham) == len(ham_rows) == 7046
    assert ham.class_map == {c: i for i, c in enumerate(HAM_CLASSES)}
    assert ham.class_counts() == dict(sorted(Counter(r["dx"] for r in ham_rows).items()))
    assert ham.group_counts() == dict(sorted(Counter(r["lesion_id"] for r in ham_rows).items()))
    assert ham.domain_counts() == dict(sorted(Counter(r["localization"] for r in ham_rows).items()))
    # each row's file is the CSV's image id, and the metadata columns are kept
    by_id = {r["image_id"]: r for r in ham_rows}
    for rec in ham.records()[:50]:
        row = by_id[Path(rec["path"]).stem]
        assert (rec["label"], rec["group"], rec["sex"]) == (row["dx"], row["lesion_id"], row["sex"])


@pytest.mark.realdata
def test_ham10000_lesion_split_never_leaks(ham: ImageSet, ham_rows: list[dict[str, str]]) -> None:
    split = group_split(ham.df["group"], ham.labels, test_size=0.2, val_size=0.1, seed=0)
    check_no_leak(split, ham.df["group"])
    lesion_of = {r["image_id"]: r["lesion_id"] for r in ham_rows}
    stems = np.array([Path(p).stem for p in ham.df["path"]])
    seen: dict[str, str] = {}
    for name, idx in split.items():
        for lesion in {lesion_of[s] for s in stems[idx]}:
            assert seen.setdefault(lesion, name) == name, f"lesion {lesion} in two splits"
    assert len(seen) == len(set(lesion_of.values()))
    assert abs(len(split["test"]) / len(ham) - 0.2) < 0.01
    mel = ham.class_map["mel"]
    assert abs(np.mean(ham.labels[split["test"]] == mel) - np.mean(ham.labels == mel)) < 0.01


@pytest.mark.realdata
def test_ham10000_domain_filter(ham: ImageSet, ham_rows: list[dict[str, str]]) -> None:
    source = ["back", "trunk", "abdomen", "chest"]
    src = ham.filter(domains=source)
    want = Counter(r["localization"] for r in ham_rows if r["localization"] in source)
    assert src.domain_counts() == dict(sorted(want.items()))
    assert len(src) == sum(want.values())
    rest = ham.filter(exclude_domains=source)
    assert len(src) + len(rest) == len(ham) and src.class_map == ham.class_map


@pytest.mark.realdata
def test_ham10000_images_decode(ham: ImageSet) -> None:
    for path in ham.df["path"].iloc[[0, 1000, 7045]]:
        img = read_image(path, expected_size=(200, 150))
        assert img.shape == (150, 200, 3) and img.dtype == np.uint8
        assert 20 < img.mean() < 250 and img.std() > 5  # a real photo, not a blank


@pytest.mark.realdata
def test_ham10000_describe_and_grid(ham: ImageSet, tmp_path: Path) -> None:
    info = describe_image_set(ham)
    assert (info["n_images"], info["n_groups"], info["n_classes"]) == (7046, 5273, 7)
    assert sum(info["class_by_domain"]["nv"].values()) == info["class_counts"]["nv"]
    out = render_image_grid(ham, tmp_path / "grid.png", per_class=4)
    with Image.open(out) as img:
        assert img.height > img.width * 1.2  # 7 rows of 4 thumbnails
        assert np.asarray(img.convert("L")).std() > 20


# ---------------------------------------------------------------- HAM10000 (fixture)


def test_ham10000_fixture_parts_missing_and_extra_dx(tmp_path: Path) -> None:
    header = "lesion_id,image_id,dx,dx_type,age,sex,localization\n"
    rows = (
        "L1,I1,mel,histo,50.0,male,back\nL1,I2,mel,histo,50.0,male,back\nL2,I3,odd,histo,,female,\n"
    )
    (tmp_path / "HAM10000_metadata.csv").write_text(header + rows)
    _png(tmp_path / "HAM10000_images_part_1" / "I1.jpg")
    _png(tmp_path / "HAM10000_images_part_2" / "I2.jpg")
    with pytest.raises(
        InvalidInputError, match=r"HAM10000_metadata\.csv: 1 of 3 images not found.*: I3"
    ):
        load_ham10000(tmp_path)
    _png(tmp_path / "images" / "I3.jpg")
    ds = load_ham10000(tmp_path, domain_column="sex")
    assert ds.class_map["odd"] == 7 and ds.class_map["mel"] == 4
    assert ds.df["domain"].tolist() == ["male", "male", "female"]
    assert np.isnan(ds.df["age"][2]) and ds.df["age"][0] == 50.0
    assert load_ham10000(tmp_path).df["domain"].tolist() == ["back", "back", "unknown"]
    with pytest.raises(InvalidInputError, match=r"missing column\(s\) site"):
        load_ham10000(tmp_path, domain_column="site")


# ---------------------------------------------------------------- Camelyon17-WILDS (fixture)

# (patient, node, x, y, tumor, slide, center, split), the WILDS columns, with its unnamed index
_CAMELYON = [
    (4, 4, 3328, 21792, 1, 0, 0, 0),
    (4, 4, 3200, 22272, 0, 0, 0, 0),
    (9, 1, 1024, 2048, 0, 1, 0, 0),
    (10, 0, 512, 640, 1, 2, 1, 0),
    (10, 2, 96, 192, 0, 3, 1, 1),
]


def _camelyon(root: Path, hospital: str = "center") -> Path:
    lines = [f",patient,node,x_coord,y_coord,tumor,slide,{hospital},split"]
    for i, (p, n, x, y, t, s, c, sp) in enumerate(_CAMELYON):
        lines.append(f"{i},{p},{n},{x},{y},{t},{s},{c},{sp}")
        _png(root / patch_relpath(p, n, x, y), color=(200 * t, 50, 50))
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    return root


def test_camelyon17_wilds_layout(tmp_path: Path) -> None:
    root = _camelyon(tmp_path)
    assert detect_format(root) == "camelyon17"
    ds = load_image_set(root)
    assert ds.class_map == {"normal": 0, "tumor": 1}
    assert Path(ds.df["path"][0]) == (
        root / "patches/patient_004_node_4/patch_patient_004_node_4_x_3328_y_21792.png"
    )
    assert ds.labels.tolist() == [1, 0, 0, 1, 0]
    assert ds.domain_counts() == {"0": 3, "1": 2}
    assert ds.df["group"].tolist() == ["slide_0", "slide_0", "slide_1", "slide_2", "slide_3"]
    assert "Unnamed: 0" not in ds.df.columns and ds.df["split"].tolist() == ["0"] * 4 + ["1"]
    by_patient = load_camelyon17(root, group_by="patient")
    assert by_patient.group_counts() == {"patient_004": 2, "patient_009": 1, "patient_010": 2}
    assert read_image(ds.df["path"][0])[0, 0].tolist() == [200, 50, 50]


def test_camelyon17_hospital_column_and_errors(tmp_path: Path) -> None:
    root = _camelyon(tmp_path, hospital="hospital")
    assert load_camelyon17(root).domain_counts() == {"0": 3, "1": 2}
    (root / patch_relpath(9, 1, 1024, 2048)).unlink()
    msg = r"metadata\.csv: 1 of 5 images not found .*patch_patient_009_node_1_x_1024_y_2048\.png"
    with pytest.raises(InvalidInputError, match=msg):
        load_camelyon17(root)
    assert len(load_camelyon17(root, check_files=False)) == 5
    text = (root / "metadata.csv").read_text()
    (root / "metadata.csv").write_text(text.replace(",hospital,", ",site,"))
    with pytest.raises(InvalidInputError, match=r"missing column\(s\) hospital"):
        load_camelyon17(root)
    (root / "metadata.csv").write_text(text.replace("0,4,4,3328,21792,1,", "0,4,4,3328,21792,2,"))
    with pytest.raises(
        InvalidInputError, match=r"metadata\.csv: row 1: tumor must be 0 or 1, got 2"
    ):
        load_camelyon17(root, check_files=False)


# ---------------------------------------------------------------- class folders (fixture)


def test_class_folders_flat(tmp_path: Path) -> None:
    _png(tmp_path / "dog" / "d1.png")
    _png(tmp_path / "cat" / "c1.JPG")
    _png(tmp_path / "cat" / "more" / "c2.png")
    (tmp_path / "cat" / "readme.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()
    assert detect_format(tmp_path) == "class_folders"
    ds = load_image_set(tmp_path)
    assert ds.class_map == {"cat": 0, "dog": 1, "empty": 2}
    assert ds.class_counts() == {"cat": 2, "dog": 1, "empty": 0}
    assert ds.df["group"].tolist() == ["c1", "c2", "d1"]
    assert set(ds.df["domain"]) == {"default"}


def test_class_folders_domains_and_group_regex(tmp_path: Path) -> None:
    for hosp in ("h1", "h2"):
        _png(tmp_path / hosp / "benign" / f"P1_{hosp}_a.png")
        _png(tmp_path / hosp / "malignant" / f"P2_{hosp}_b.png")
    ds = load_class_folders(tmp_path, domain_level=True, group_regex=r"^(P\d+)_")
    assert ds.domain_counts() == {"h1": 2, "h2": 2}
    assert ds.group_counts() == {"P1": 2, "P2": 2}
    _png(tmp_path / "h1" / "benign" / "nopatient.png")
    with pytest.raises(InvalidInputError, match=r"nopatient\.png: file name does not match"):
        load_class_folders(tmp_path, domain_level=True, group_regex=r"^(P\d+)_")


def test_class_folders_without_images(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.txt").write_text("x")
    with pytest.raises(InvalidInputError, match=r"no image files with suffix"):
        load_class_folders(tmp_path)
    with pytest.raises(InvalidInputError, match=r"not a recognised image set layout"):
        load_image_set(tmp_path)


# ---------------------------------------------------------------- preview (fixture)


def test_render_grid_rows_follow_classes(tmp_path: Path) -> None:
    for i in range(3):
        _png(tmp_path / "data" / "a_red" / f"r{i}.png", color=(255, 0, 0), size=32)
        _png(tmp_path / "data" / "b_blue" / f"b{i}.png", color=(0, 0, 255), size=32)
    ds = load_class_folders(tmp_path / "data")
    info = describe_image_set(ds)
    assert info["class_by_domain"] == {"a_red": {"default": 3}, "b_blue": {"default": 3}}
    out = render_image_grid(ds, tmp_path / "grid.png", per_class=2)
    img = np.asarray(Image.open(out).convert("RGB")).astype(int)
    red = (img[..., 0] > 200) & (img[..., 1] < 50) & (img[..., 2] < 50)
    blue = (img[..., 2] > 200) & (img[..., 0] < 50) & (img[..., 1] < 50)
    rows_red, rows_blue = np.nonzero(red)[0], np.nonzero(blue)[0]
    assert len(rows_red) > 500 and len(rows_blue) > 500
    assert rows_red.max() < rows_blue.min()  # class rows in class-index order

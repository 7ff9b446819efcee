"""Light commands start light: ``medcl --help``, ``wsi tile`` and ``review`` never import torch
(nor scipy, matplotlib, ...), checked in a fresh interpreter after the command ran; and a tile whose
only resolution is a default TIFF tag is refused until ``--mpp`` is given."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import tifffile

from medcl.testing.slides import synthetic_tissue_image, write_pyramidal_tiff

HEAVY = ("torch", "scipy", "sklearn", "timm", "monai", "matplotlib")


def run_in_fresh_process(argv: list[str]) -> tuple[int, list[str], str]:
    """Run ``medcl.cli.main(argv)`` in a new interpreter: (exit code, heavy modules, stdout)."""
    code = (
        "import json, sys\n"
        "from medcl.cli import main\n"
        "try:\n"
        f"    rc = main({argv!r})\n"
        "except SystemExit as exc:\n"
        "    rc = exc.code\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print('@@' + json.dumps([rc, heavy]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    marker = [line for line in out.stdout.splitlines() if line.startswith("@@")]
    assert marker, out.stdout + out.stderr
    rc, heavy = json.loads(marker[-1][2:])
    return int(rc or 0), heavy, out.stdout


def test_help_imports_nothing_heavy() -> None:
    for argv in (["--help"], ["wsi", "--help"], ["review", "--help"], []):
        rc, heavy, stdout = run_in_fresh_process(argv)
        assert rc == 0 and "usage: medcl" in stdout
        assert heavy == [], (argv, heavy)


def test_wsi_tile_imports_no_torch(tmp_path: Path) -> None:
    image, _ = synthetic_tissue_image(768, 1024, seed=2)
    (tmp_path / "slides").mkdir()
    write_pyramidal_tiff(tmp_path / "slides" / "s.tif", image, mpp=0.5, levels=2)
    rc, heavy, stdout = run_in_fresh_process(
        ["wsi", "tile", "--slides", str(tmp_path / "slides"), "--out", str(tmp_path / "out")]
    )
    assert rc == 0, stdout
    assert "ok: 1" in stdout
    assert heavy == [], heavy


def test_review_commands_import_no_torch(tmp_path: Path) -> None:
    db = ["--db", f"sqlite:///{tmp_path / 'review.db'}"]
    for argv in (["review", "db", "upgrade", *db], ["review", "users", *db]):
        rc, heavy, stdout = run_in_fresh_process(argv)
        assert rc == 0, stdout
        assert heavy == [], (argv, heavy)


def test_tile_with_only_a_72_dpi_tag_needs_mpp(tmp_path: Path) -> None:
    from medcl.cli import main

    folder = tmp_path / "slides"
    folder.mkdir()
    tile, truth = synthetic_tissue_image(224, 224, seed=0, n_blobs=3)
    assert truth.mean() > 0.1
    tifffile.imwrite(folder / "tile.tif", tile, resolution=(72, 72), resolutionunit="INCH")
    assert main(["wsi", "tile", "--slides", str(folder), "--out", str(tmp_path / "a")]) == 2
    status = (tmp_path / "a" / "status.csv").read_text()
    assert "failed" in status and "pass --mpp" in status
    out = tmp_path / "b"
    args = ["--mpp", "0.5", "--patch-size", "32", "--set", "tissue.min_tissue_area_um2=100"]
    assert main(["wsi", "tile", "--slides", str(folder), *args, "--out", str(out)]) == 0
    assert "tile.tif,ok," in (out / "status.csv").read_text()

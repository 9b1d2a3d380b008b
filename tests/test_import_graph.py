"""The packages depend on each other one way only, as the design card draws it.

Read from the source with `ast` (imports inside functions count too: a lazy import is still an
arrow), so a new upward import fails here with its file and line instead of turning up later
as an import loop or a store that cannot be used without the model code.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("store", "models", "captions", "rerank", "ingest", "search", "evaluation", "train",
            "ui")
EVERYTHING = frozenset(PACKAGES)

# What each package may import from ours (the redesign's target, issue 15).
ALLOWED: dict[str, frozenset[str]] = {
    "store": frozenset(),
    "models": frozenset(),
    "captions": frozenset({"models"}),
    "rerank": frozenset({"models", "store"}),
    "ingest": frozenset({"models", "store"}),
    "search": frozenset({"rerank", "models", "store"}),
    # evaluation times the path search uses, so it may call search
    "evaluation": frozenset({"models", "rerank", "store", "captions", "search"}),
    # training measures itself on its validation split with the evaluation harness
    "train": frozenset({"models", "captions", "evaluation"}),
    "ui": frozenset({"search"}),
    "cli": EVERYTHING,
}
# Arrows the design card names as never allowed (a clearer message than "not in the table").
NEVER = {("store", "models"), ("rerank", "search"), ("ingest", "search"), ("ui", "store"),
         ("ui", "ingest")} | {(p, "cli") for p in PACKAGES} | {
             (p, "ui") for p in PACKAGES if p != "ui"}


@dataclass(frozen=True)
class Arrow:
    source: str  # our package that imports (or "cli")
    target: str  # our package (or "cli") it imports
    where: str  # file:line


def package_of(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return "cli" if rel.parts == ("cli.py",) else rel.parts[0]


def module_parts(path: Path) -> list[str]:
    """The dotted name under twinrank of a file: store/edge.py -> ["store", "edge"]."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def imported_names(node: ast.Import | ast.ImportFrom, path: Path) -> list[list[str]]:
    """Absolute dotted names (split) that one import statement reaches."""
    if isinstance(node, ast.Import):
        return [alias.name.split(".") for alias in node.names]
    if node.level:  # relative: resolve against the importing module's package
        package = module_parts(path)
        if path.name != "__init__.py":
            package = package[:-1]
        base = ["twinrank", *package[: len(package) - (node.level - 1)]]
    else:
        base = []
    head = base + (node.module.split(".") if node.module else [])
    if node.module is None or head == ["twinrank"]:
        # `from twinrank import search` / `from . import x`: each name may be a module
        return [head + [alias.name] for alias in node.names]
    return [head]


def our_target(name: list[str]) -> str | None:
    """Which of our packages a dotted name lands in, if any."""
    if name[0] == "twinrank" and len(name) > 1:
        return name[1] if name[1] in EVERYTHING | {"cli"} else None
    return None


def source_files() -> list[Path]:
    files = [ROOT / "cli.py"]
    for package in PACKAGES:
        files += sorted((ROOT / package).rglob("*.py"))
    return files


def read_arrows() -> tuple[list[Arrow], list[str]]:
    """Every import of one of our packages from another, and imports that skip the namespace."""
    arrows: list[Arrow] = []
    bare: list[str] = []
    for path in source_files():
        source = package_of(path)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            for name in imported_names(node, path):
                if name[0] == "bench" and source == "cli":
                    continue  # `twinrank bench` runs from a checkout, and says so elsewhere
                if name[0] in EVERYTHING | {"cli", "bench"}:
                    # installed, only `twinrank` exists: `import search` would find another
                    # project's module or nothing
                    bare.append(f"{where}: import of {'.'.join(name)} outside twinrank.*")
                target = our_target(name)
                if target is not None and target != source:
                    arrows.append(Arrow(source, target, where))
    return arrows, bare


def find_loops(edges: dict[str, set[str]]) -> list[list[str]]:
    """Cycles between packages (one per strongly connected group, as a path)."""
    loops = []
    for start in sorted(edges):
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in sorted(edges.get(node, ())):
                if nxt == start:
                    loops.append(path + [start])
                elif nxt not in path and nxt > start:  # each cycle once, from its least node
                    stack.append((nxt, path + [nxt]))
    return loops


def test_files_are_read_and_arrows_are_found() -> None:
    # the reader itself works: the CLI reaches the packages below it, and each is read
    arrows, _ = read_arrows()
    assert {a.target for a in arrows if a.source == "cli"} >= {"search", "ingest", "models"}
    assert {package_of(p) for p in source_files()} == EVERYTHING | {"cli"}


def test_relative_imports_are_resolved() -> None:
    node = ast.parse("from ..store import edge\nfrom . import hits").body
    here = ROOT / "search" / "client.py"
    assert imported_names(node[0], here) == [["twinrank", "store"]]  # type: ignore[arg-type]
    assert imported_names(node[1], here) == [["twinrank", "search", "hits"]]  # type: ignore[arg-type]


def test_no_import_outside_the_twinrank_namespace() -> None:
    _, bare = read_arrows()
    assert not bare, "\n" + "\n".join(bare)


def test_no_never_arrow_and_only_allowed_ones() -> None:
    arrows, _ = read_arrows()
    problems = []
    for arrow in sorted(arrows, key=lambda a: (a.source, a.target, a.where)):
        if (arrow.source, arrow.target) in NEVER:
            problems.append(f"{arrow.where}: {arrow.source} -> {arrow.target} (never allowed)")
        elif arrow.target not in ALLOWED[arrow.source]:
            problems.append(f"{arrow.where}: {arrow.source} -> {arrow.target} (not in the "
                            f"table: {arrow.source} may import {sorted(ALLOWED[arrow.source])})")
    assert not problems, "\n" + "\n".join(problems)


def test_no_loop_between_packages() -> None:
    arrows, _ = read_arrows()
    edges: dict[str, set[str]] = {}
    for arrow in arrows:
        edges.setdefault(arrow.source, set()).add(arrow.target)
    loops = find_loops(edges)
    where = {(a.source, a.target): a.where for a in arrows}
    report = [" -> ".join(loop) + "  (" + ", ".join(
        where[(a, b)] for a, b in zip(loop, loop[1:], strict=False)) + ")" for loop in loops]
    assert not loops, "\n" + "\n".join(report)


def test_loop_finder_finds_a_loop() -> None:
    assert find_loops({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_loops({"a": {"b"}, "b": {"c"}}) == []

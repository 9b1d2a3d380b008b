"""Every docstring example in the packages runs and prints what it shows.

Modules are found by walking the package folders, so a new module's examples are checked
without being listed here. An example that cannot run here (a Qdrant Cloud URL, a
download) is marked ``# doctest: +SKIP``; it is still compiled, so it stays valid Python.

Each docstring runs in a fresh temporary folder (its working directory and ``HOME``) that
holds what examples commonly name, so they can be written as a user would type them:

- ``photos/``: six small images (``photos/2021/*.png``, ``photos/2022/*.jpg``);
- ``store/``, ``~/.twinrank/store`` and ``~/.twinrank/photos``: stores built from them by
  ``twinrank ingest`` with the tiny model;
- the names ``model`` (the tiny random model), ``image`` (a PIL image), ``image_path``,
  ``info`` (the tiny model's collection info), ``query_vector`` (a unit text vector),
  ``store`` (an open store), ``client`` (an open ``SearchClient``), ``hit`` (its first hit
  for "a red circle"), ``hits``, ``folder`` (an empty folder) and ``Path``, each made only
  when an example uses it.
"""

from __future__ import annotations

import ast
import copy
import doctest
import importlib
import os
import shutil
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import make_image

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("store", "models", "captions", "rerank", "ingest", "search", "evaluation", "train",
            "ui")
# Streamlit scripts: importing one runs the page, so their examples cannot be collected
# (a test below checks that they hold none).
SCRIPTS = frozenset({"twinrank.ui.app"})
OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def module_names() -> list[str]:
    names = ["twinrank.cli"]
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            names.append(".".join(["twinrank", *(parts[:-1] if parts[-1] == "__init__" else
                                                   parts)]))
    return names


MODULES = [name for name in module_names() if name not in SCRIPTS]


def make_photos(folder: Path) -> Path:
    for i in range(3):
        make_image(folder / "2021" / f"a{i}.png", seed=i)
    for i in range(3, 6):
        make_image(folder / "2022" / f"b{i}.jpg", seed=i)
    return folder


@pytest.fixture(scope="session")
def doctest_world(tmp_path_factory: pytest.TempPathFactory, _tiny_model_once: Any) -> Path:
    """Images and a store built once; each docstring gets copies."""
    from twinrank.ingest.job import IngestJob, ingest_folder
    from twinrank.ingest.runner import IngestConfig

    world = tmp_path_factory.mktemp("doctest_world")
    photos = make_photos(world / "photos")
    with pytest.MonkeyPatch.context() as patch:
        # the store's ONNX query side (tens of MB) is written once, apart, and copied only
        # into the folders of examples that use it
        patch.setenv("TWINRANK_FAST_EXPORT", "0")
        ingest_folder(IngestJob(IngestConfig(photos, progress=False), world / "store",
                                "twinrank-tiny", device="cpu", torch_threads=2))
    try:
        from twinrank.models.export import export_query_side
        from twinrank.models.onnx_files import FAST_DIR
    except ImportError:  # no fast query path in this checkout
        return world
    export_query_side(_tiny_model_once, world / FAST_DIR)
    return world


def names_used(test: doctest.DocTest) -> set[str]:
    """Names the examples read before they assign them, and the strings they mention."""
    names: set[str] = set()
    assigned: set[str] = set()
    for example in test.examples:
        try:
            tree = ast.parse(example.source)
        except SyntaxError:
            continue  # doctest reports it
        nodes = sorted((n for n in ast.walk(tree) if isinstance(n, ast.Name)),
                       key=lambda n: (n.lineno, n.col_offset))
        loads = {n.id for n in nodes if isinstance(n.ctx, ast.Load)}
        names |= loads - assigned
        assigned |= {n.id for n in nodes if not isinstance(n.ctx, ast.Load)}
        names |= {n.value for n in ast.walk(tree)
                  if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    return names


class Fixtures:
    """Makes the names one docstring uses; closes what it opened afterwards."""

    def __init__(self, world: Path, here: Path, model: Any, closing: ExitStack) -> None:
        self.world, self.here, self.base_model, self.closing = world, here, model, closing
        self.made: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        if name not in self.made:
            self.made[name] = getattr(self, f"make_{name}")()
        return self.made[name]

    def make_Path(self) -> Any:  # noqa: N802 - the name examples use
        return Path

    def make_model(self) -> Any:
        return copy.deepcopy(self.base_model)

    def make_image(self) -> Any:
        from PIL import Image

        return Image.open(self.get("image_path")).convert("RGB")

    def make_image_path(self) -> Path:
        return self.here / "photos" / "2021" / "a0.png"

    def make_folder(self) -> Path:
        folder = self.here / "folder"
        folder.mkdir()
        return folder

    def make_info(self) -> Any:
        from twinrank.store import read_info

        return read_info(self.world / "store")

    def make_query_vector(self) -> np.ndarray:
        size = self.get("info").vector_size
        vector = np.random.default_rng(0).normal(size=size).astype(np.float32)
        return vector / np.linalg.norm(vector)

    def make_store(self) -> Any:
        if "client" in self.made:
            return self.made["client"].store
        from twinrank.store import open_store

        target = self.here / "fixture_store"
        copy_store(self.world, target)
        store = open_store(target)
        self.closing.callback(store.close)
        return store

    def make_client(self) -> Any:
        from twinrank.search import SearchClient

        target = self.here / "fixture_client_store"
        copy_store(self.world, target)
        client = SearchClient(target, model=self.get("model"))
        self.closing.callback(client.close)
        return client

    def make_hits(self) -> Any:
        return self.get("client").search("a red circle", k=3)

    def make_hit(self) -> Any:
        return self.get("hits")[0]


FIXTURE_NAMES = {name[len("make_"):] for name in vars(Fixtures) if name.startswith("make_")}


def sparse_copy(source: str, target: str) -> None:
    """Copy a file without filling its holes: a Qdrant Edge shard of a few images is
    ~0.6 MB on disk but ~260 MB long (preallocated WAL and mmap chunks), and a plain copy
    writes every zero."""
    with open(source, "rb") as src, open(target, "wb") as dst:
        size = os.fstat(src.fileno()).st_size
        position = 0
        while position < size:
            try:
                start = os.lseek(src.fileno(), position, os.SEEK_DATA)
            except OSError:  # only a hole is left
                break
            end = os.lseek(src.fileno(), start, os.SEEK_HOLE)
            src.seek(start)
            dst.seek(start)
            while start < end:
                chunk = src.read(min(end - start, 1 << 20))
                dst.write(chunk)
                start += len(chunk)
            position = end
        dst.truncate(size)
    shutil.copystat(source, target)


def copy_store(world: Path, target: Path, fast: bool = False) -> None:
    shutil.copytree(world / "store", target, copy_function=sparse_copy)
    if fast:
        shutil.copytree(world / "fast", target / "fast")


def prepare_folder(here: Path, world: Path, used: set[str]) -> None:
    """The working directory and HOME one docstring sees, with the stores it names."""
    shutil.copytree(world / "photos", here / "photos")
    (here / "home").mkdir()
    fast = any("fast" in n.lower() for n in used) and (world / "fast").is_dir()
    wanted = {
        here / "store": any(n == "store" or n.startswith("store/") for n in used),
        here / "home" / ".twinrank" / "store": any(".twinrank/store" in n for n in used),
        here / "home" / ".twinrank" / "photos": any(".twinrank/photos" in n for n in used),
    }
    for target, needed in wanted.items():
        if needed:
            copy_store(world, target, fast)


def docstring_tests(name: str) -> Iterator[doctest.DocTest]:
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as error:  # an optional dependency (ray, onnxruntime, ...)
        if (error.name or "").startswith("twinrank"):
            raise
        pytest.skip(f"{name} needs {error.name}, which is not installed")
    for test in doctest.DocTestFinder().find(module):
        if test.examples:
            yield test


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str, doctest_world: Path, _tiny_model_once: Any,
                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    failures: list[str] = []
    for number, test in enumerate(docstring_tests(name)):
        here = tmp_path / f"doc{number}"
        here.mkdir()
        used = names_used(test)
        prepare_folder(here, doctest_world, used)
        monkeypatch.chdir(here)
        monkeypatch.setenv("HOME", str(here / "home"))
        monkeypatch.setenv("TWINRANK_HOME", str(here / "home" / ".twinrank"))
        monkeypatch.setenv("TWINRANK_FAST_EXPORT", "0")
        monkeypatch.delenv("TWINRANK_STORE", raising=False)
        for example in test.examples:  # an illustration must still be valid Python
            if example.options.get(doctest.SKIP):
                try:
                    compile(example.source, test.name, "single")
                except SyntaxError as error:
                    failures.append(f"{test.name}: skipped example does not compile: {error}")
        runner = doctest.DocTestRunner(optionflags=OPTIONS)
        with ExitStack() as closing:
            fixtures = Fixtures(doctest_world, here, _tiny_model_once, closing)
            for fixture in sorted(FIXTURE_NAMES & used - set(test.globs)):
                test.globs[fixture] = fixtures.get(fixture)
            runner.run(test, out=failures.append)
        test.globs.clear()
        shutil.rmtree(here, ignore_errors=True)
    assert not failures, "\n".join(failures)


def test_scripts_left_out_hold_no_examples() -> None:
    for name in SCRIPTS:
        path = ROOT / (name.removeprefix("twinrank.").replace(".", "/") + ".py")
        tree = ast.parse(path.read_text(encoding="utf-8"))
        nodes: list[Any] = [tree] + [n for n in ast.walk(tree) if isinstance(
            n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
        docs = [ast.get_docstring(n) or "" for n in nodes]
        assert not [d for d in docs if ">>>" in d], f"{name} runs at import; move its examples"


def test_every_package_module_is_collected() -> None:
    # the walk finds the modules of every package, so new modules are checked too
    assert "twinrank.store.filters" in MODULES and "twinrank.train.losses" in MODULES
    assert {name.split(".")[1] for name in MODULES} == set(PACKAGES) | {"cli"}
    assert sum(len(t.examples) for t in docstring_tests("twinrank.store.filters")) >= 5


def test_a_wrong_example_fails(doctest_world: Path, _tiny_model_once: Any, tmp_path: Path) -> None:
    # the runner used above reports a wrong output and a failing example
    parser = doctest.DocTestParser()
    test = parser.get_doctest(">>> 1 + 1\n3\n>>> model.nothing\n", {}, "wrong", None, 0)
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    with ExitStack() as closing:
        test.globs["model"] = Fixtures(doctest_world, tmp_path, _tiny_model_once,
                                       closing).get("model")
        result = runner.run(test, out=lambda text: None)
    assert result.failed == 2


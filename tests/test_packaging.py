"""`pip install twinrank` adds one import name, and what the README promises runs from it.

The wheel is built from a copy of this working tree and installed into a fresh virtual
environment that is not the development one: the repository is not on its path and the
editable install's finder is not active there. Its dependencies (torch, open_clip, qdrant, ...)
come from the development environment through a ``.pth`` line, because nothing can be
downloaded here; a path a ``.pth`` file adds is not a site directory, so the ``.pth`` files
inside it (the editable finder's among them) are not run, which a test below checks.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import make_image

ROOT = Path(__file__).resolve().parents[1]
# About 35 s of CPU (a wheel build and five fresh interpreters, three of them importing
# torch): well under a minute alone, but far longer on a machine others are loading.
pytestmark = pytest.mark.timeout(900)


@dataclass(frozen=True)
class FreshEnv:
    wheel: Path
    python: Path
    site_packages: Path
    home: Path  # HOME and cwd for commands: nothing of the repository is reachable from it

    def run(self, *args: str | Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("PYTHON", "VIRTUAL_ENV", "TWINRANK"))}
        env.update(HOME=str(self.home), TWINRANK_HOME=str(self.home / ".twinrank"),
                   HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
        env["PATH"] = f"{self.python.parent}{os.pathsep}{env.get('PATH', '')}"
        return subprocess.run([str(a) for a in args], cwd=self.home, env=env, text=True,
                              capture_output=True, timeout=timeout)

    def python_code(self, code: str) -> subprocess.CompletedProcess[str]:
        return self.run(self.python, "-c", code)


def copy_sources(target: Path) -> list[str]:
    """The files the wheel is built from: pyproject, README and the package folders it names."""
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    named = set(re.findall(r'"twinrank\.(\w+)', pyproject))  # twinrank.X -> X/ (or X.py)
    folders = sorted(name for name in named if (ROOT / name).is_dir())
    assert folders, "pyproject.toml names no twinrank.* package"
    target.mkdir()
    for name in ("pyproject.toml", "README.md", *[p.name for p in ROOT.glob("*.py")]):
        shutil.copy2(ROOT / name, target / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in folders:
        shutil.copytree(ROOT / folder, target / folder, ignore=ignore)
    return folders


@pytest.fixture(scope="module")
def fresh_env(tmp_path_factory: pytest.TempPathFactory) -> FreshEnv:
    base = tmp_path_factory.mktemp("packaging")
    # a copy, so the build's build/ and egg-info folders never touch (or leak stale files
    # from) the shared working tree
    copy_sources(base / "src")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "-q", "-w", str(base / "dist"), str(base / "src")],
        capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    (wheel,) = (base / "dist").glob("twinrank-*.whl")

    new = base / "venv"
    venv.create(new, with_pip=False)
    python = new / "bin" / "python"
    site_packages = Path(subprocess.check_output(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        text=True).strip())
    # installed before the dependencies' path is added, so pip sees an empty environment
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--no-index", "-q", str(wheel)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr
    (site_packages / "dev_dependencies.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    home = base / "home"
    home.mkdir()
    return FreshEnv(wheel, python, site_packages, home)


def test_the_wheel_installs_one_import_name(fresh_env: FreshEnv) -> None:
    names = zipfile.ZipFile(fresh_env.wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"twinrank", f"{fresh_env.wheel.name.split('-')[0]}-"
                    f"{fresh_env.wheel.name.split('-')[1]}.dist-info"}, sorted(tops)
    # the packaged model configs and the demo model travel with the code
    assert "twinrank/models/configs/twinrank-tiny.json" in names
    assert "twinrank/models/demo/model.safetensors" in names
    # and the app's result grid (its JavaScript and CSS are read at import)
    assert {"twinrank/ui/results_grid.js", "twinrank/ui/results_grid.css"} <= set(names)
    assert "twinrank/cli.py" in names
    assert not [n for n in names if "__pycache__" in n or n.startswith("twinrank/tests/")]


def test_the_fresh_env_sees_the_wheel_and_not_the_repository(fresh_env: FreshEnv) -> None:
    code = (
        "import importlib.util, sys, twinrank.store, twinrank.cli\n"
        "print(twinrank.cli.__file__)\n"
        "print(any('__editable__' in str(f) for f in sys.meta_path))\n"
        "print([n for n in ('models', 'search', 'store', 'rerank', 'ingest', 'ui', 'cli',"
        " 'train', 'evaluation', 'captions', 'bench') if importlib.util.find_spec(n)])\n")
    shown = fresh_env.python_code(code)
    assert shown.returncode == 0, shown.stderr
    cli_file, editable_finder, importable = shown.stdout.splitlines()
    assert Path(cli_file).is_relative_to(fresh_env.site_packages)
    assert editable_finder == "False"  # the development install's finder is not active
    assert importable == "[]"  # `import models` / `import search` find nothing
    failed = fresh_env.python_code("import models")
    assert failed.returncode != 0 and "No module named 'models'" in failed.stderr


def test_packaged_model_config_builds_the_tiny_model(fresh_env: FreshEnv) -> None:
    code = ("from twinrank.models import create_model\n"
            "model = create_model('twinrank-tiny', device='cpu')\n"
            "print(type(model).__name__, model.model_id)\n")
    shown = fresh_env.python_code(code)
    assert shown.returncode == 0, shown.stderr
    assert "twinrank-tiny" in shown.stdout


def test_the_command_runs_from_the_fresh_env(fresh_env: FreshEnv) -> None:
    command = fresh_env.python.parent / "twinrank"
    shown = fresh_env.run(command, "--help")
    assert shown.returncode == 0, shown.stderr
    for name in ("ingest", "search", "ui", "train", "evaluate"):
        assert name in shown.stdout


def test_bench_from_the_fresh_env_says_it_needs_a_checkout(fresh_env: FreshEnv) -> None:
    shown = fresh_env.run(fresh_env.python.parent / "twinrank", "bench")
    assert shown.returncode == 1
    assert "checkout" in shown.stderr and "Traceback" not in shown.stderr


def readme_client_examples() -> list[str]:
    """The README's ```python blocks that use the client (found by their import line)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)
    return [b for b in blocks if re.search(r"^from twinrank\.search import", b, re.MULTILINE)]


def test_the_readme_client_example_runs_from_the_fresh_env(fresh_env: FreshEnv) -> None:
    examples = readme_client_examples()
    assert examples, "README.md has no ```python block importing twinrank.search"
    # the store the examples name, built by the installed command from a few images
    photos = fresh_env.home / "Pictures"
    for i in range(6):
        make_image(photos / f"p{i}.png", seed=i)
    stores = sorted(set(re.findall(r"SearchClient\(\"(~/[^\"]+)\"", "\n".join(examples))))
    assert stores, "the README example should open a store by a path under ~"
    for store in stores:
        built = fresh_env.run(fresh_env.python.parent / "twinrank", "ingest", photos,
                              "--store", store, "--model", "twinrank-tiny", "--threads", "1",
                              "--no-progress")
        assert built.returncode == 0, built.stderr
    for name in set(re.findall(r"Path\(\"([\w.-]+\.(?:jpg|jpeg|png))\"\)", "\n".join(examples))):
        make_image(fresh_env.home / name, seed=7)  # image files the examples query by name
    for number, example in enumerate(examples):
        script = fresh_env.home / f"readme_example_{number}.py"
        script.write_text(example, encoding="utf-8")
        ran = fresh_env.run(fresh_env.python, script)
        assert ran.returncode == 0, f"README example {number}:\n{example}\n{ran.stderr}"

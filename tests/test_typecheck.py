"""The type checker sees across packages: ``twinrank.*`` is the code, not ``Any``.

``.ci/typecheck`` runs mypy on the import name users see through ``.mypy_root/twinrank``
(CI runs it before the tests, so the cache is warm when this runs). A type error planted
across a package boundary must be reported: were ``twinrank.*`` unresolved, mypy would
pass it silently.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(600)


def test_a_type_error_across_packages_is_reported(tmp_path: Path) -> None:
    mypy = Path(sys.executable).with_name("mypy")
    if not mypy.is_file():
        pytest.skip("mypy is not installed in this environment (pip install -e .[dev])")
    (ROOT / ".mypy_root").mkdir(exist_ok=True)
    link = ROOT / ".mypy_root" / "twinrank"
    if not link.is_symlink():
        link.symlink_to("..")
    probe = tmp_path / "probe.py"
    probe.write_text("from twinrank.search.hits import Hit\n"
                     "from twinrank.store.filters import SearchFilter\n"
                     "wrong: int = SearchFilter()\n"
                     "reveal_type(Hit)\n")
    done = subprocess.run(
        [str(mypy), "--config-file", str(ROOT / "pyproject.toml"), "--cache-dir",
         str(ROOT / ".mypy_cache"), "--follow-imports", "silent", str(probe)],
        cwd=tmp_path, env=os.environ | {"MYPYPATH": str(ROOT / ".mypy_root")}, capture_output=True,
        text=True, timeout=540)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert 'has type "SearchFilter", variable has type "int"' in out, out
    assert "twinrank.search.hits.Hit" in out, out  # resolved to the class, not Any

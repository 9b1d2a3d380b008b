"""A re-run of ingest over unchanged files loads no model and no torch; a change still
loads it. Real processes, real Qdrant Edge, the tiny random model."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import make_image
from twinrank.ingest.job import IngestJob, ingest_folder
from twinrank.ingest.runner import IngestConfig
from twinrank.models.onnx_files import FAST_DIR, read_manifest
from twinrank.store import CollectionMismatchError


def cli_ingest_in_a_process(folder: Path, store: Path) -> str:
    """`twinrank ingest` in a fresh process; prints whether torch / open_clip got imported."""
    script = ("import sys\n"
              "from twinrank.cli import app\n"
              f"app(['ingest', {str(folder)!r}, '--store', {str(store)!r}, '--no-progress', "
              "'--model', 'twinrank-tiny'], "
              "standalone_mode=False)\n"
              "print('LOADED', 'torch' in sys.modules, 'open_clip' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=240, check=True)
    return done.stdout + done.stderr


def job(folder: Path, store: Path) -> IngestJob:
    return IngestJob(IngestConfig(folder, progress=False), store, model="twinrank-tiny")


@pytest.fixture
def good_folder(image_folder: Path) -> Path:
    """The 10 readable images (a file that fails is read again on every run, by design:
    it may have been fixed, so a folder with one loads the model on every run)."""
    (image_folder / "2022" / "broken.jpg").unlink()
    return image_folder


def test_a_noop_rerun_imports_no_torch(good_folder: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    first = ingest_folder(job(good_folder, store))
    assert first.added == 10 and "model" in first.stage_seconds
    output = cli_ingest_in_a_process(good_folder, store)
    assert "unchanged 10," in output and "added 0," in output
    assert "LOADED False False" in output, output


def test_a_new_file_loads_the_model_and_is_embedded(good_folder: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    ingest_folder(job(good_folder, store))
    make_image(good_folder / "2023" / "new.png", seed=77)
    report = ingest_folder(job(good_folder, store))
    assert (report.added, report.unchanged, report.embedded) == (1, 10, 1)
    assert "model" in report.stage_seconds


def test_a_noop_rerun_writes_a_missing_fast_path(good_folder: Path, tmp_path: Path) -> None:
    """A collection from before the fast path (no ``fast/``) gets one on its next run."""
    store = tmp_path / "store"
    ingest_folder(job(good_folder, store))
    shutil.rmtree(store / FAST_DIR)
    report = ingest_folder(job(good_folder, store))
    assert report.unchanged == 10 and report.embedded == 0
    assert read_manifest(store / FAST_DIR) is not None


def test_another_model_is_still_refused(good_folder: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    ingest_folder(job(good_folder, store))
    other = IngestJob(IngestConfig(good_folder, progress=False), store, model="twinrank-scenes")
    with pytest.raises(CollectionMismatchError):
        ingest_folder(other)

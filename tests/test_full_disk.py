"""A full disk never kills twinrank with a signal (issue 33, item 1).

Qdrant Edge writes through memory maps, so on a full disk a process died of SIGBUS (exit
135) with no output, in an ingest and in a search. Here a real 20 MB tmpfs holds the store,
real ``twinrank`` processes ingest 600 small JPEGs into it and search it: the ingest stops
with one sentence and its report, a search answers, and once the disk has room a re-run
completes with nothing lost or duplicated. Tests run as root (so does CI); where a tmpfs
cannot be mounted they skip, saying why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from twinrank.store import CollectionInfo, EdgeStore, PointRecord, space
from twinrank.store.space import DiskFullError

IMAGES = 600
ENV = {**os.environ, "TWINRANK_FAST_EXPORT": "0", "TWINRANK_STORE_WAIT_S": "60"}


def twinrank(*args: str, env: dict[str, str] | None = None,
             ) -> subprocess.CompletedProcess[str]:
    """A real ``twinrank`` process (the installed console script)."""
    script = Path(sys.executable).with_name("twinrank")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "twinrank.cli"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=300,
                          env=env or ENV)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 20 MB tmpfs, unmounted after the test."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command here, so no small disk to fill")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a 20 MB tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """600 distinct small JPEGs (on the ordinary disk)."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(33)
    for i in range(IMAGES):
        pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"{i:03d}.jpg", quality=90)
    return root


def stored_paths(store: Path) -> list[str]:
    with EdgeStore.open(store) as opened:
        return [path for _, payload in opened.iter_payloads() for path in payload["paths"]]


def test_ingest_stops_on_a_full_disk_with_a_sentence_and_resumes(
        small_disk: Path, photos: Path, tmp_path: Path) -> None:
    store, report = small_disk / "store", tmp_path / "report.json"
    first = twinrank("ingest", str(photos), "--store", str(store), "--model", "twinrank-tiny",
                     "--no-progress", "--report", str(report))
    assert first.returncode == 1, (first.returncode, first.stderr[-2000:])  # never 135 / -7
    assert "Traceback" not in first.stderr
    errors = [line for line in first.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1
    sentence = errors[0]
    assert "free; the" in sentence and "images left need about" in sentence
    assert "Nothing is lost" in sentence and "run the same command again" in sentence
    summary = next(line for line in first.stderr.splitlines() if line.startswith("added "))
    recorded = json.loads(report.read_text())
    assert recorded["notes"][-1] == sentence.removeprefix("Error: ")
    written = recorded["added"]
    assert 0 < written < IMAGES and summary.startswith(f"added {written},")

    # the store on the full disk answers: opening it in place would fill its maps' holes,
    # so it is searched from a private copy in the temporary folder
    found = twinrank("search", "a photo", "--store", str(store), "--no-rerank", "--json",
                     "-k", "5")
    assert found.returncode == 0, found.stderr[-2000:]
    assert len(json.loads(found.stdout)) == 5
    # with no room there either: one sentence, never a signal
    cramped = twinrank("search", "a photo", "--store", str(store), "--no-rerank",
                       env={**ENV, "TMPDIR": str(small_disk)})
    assert cramped.returncode == 1 and "Traceback" not in cramped.stderr
    assert "Error: The disk holding the store" in cramped.stderr
    assert "could not be made" in cramped.stderr

    # room again: the same command finishes, nothing lost or duplicated
    subprocess.run(["mount", "-o", "remount,size=400m", str(small_disk)], check=True)
    second = twinrank("ingest", str(photos), "--store", str(store), "--no-progress")
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stdout.startswith(f"added {IMAGES - written}, updated 0, unchanged {written},")
    paths = stored_paths(store)
    assert len(paths) == IMAGES and len(set(paths)) == IMAGES
    checked = twinrank("check", str(store))
    assert checked.returncode == 0 and f"{IMAGES} images" in checked.stdout


def test_creating_a_store_on_a_disk_without_room_says_so(small_disk: Path,
                                                         photos: Path) -> None:
    filler = small_disk / "filler"
    filler.write_bytes(bytes(18 * 1_000_000))  # leaves about 3 MB
    done = twinrank("ingest", str(photos), "--store", str(small_disk / "store"), "--model",
                    "twinrank-tiny", "--no-progress")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "creating a store needs about" in done.stderr
    assert not (small_disk / "store" / "shard").exists()


def test_a_write_that_would_not_fit_raises_before_qdrant_writes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    info = CollectionInfo("m", 8, 2, 4, model_source="m")
    rng = np.random.default_rng(0)

    def record(i: int) -> PointRecord:
        return PointRecord(f"00000000-0000-0000-0000-{i:012d}", rng.normal(size=8),
                           np.ones((2, 4)), {"paths": [f"/p/{i}.jpg"]})

    with EdgeStore.open(tmp_path / "store", info) as store:
        store.upsert([record(1)])
        monkeypatch.setattr(space, "free_bytes", lambda _: space.RESERVE)  # the reserve only
        with pytest.raises(DiskFullError, match="writing 32 images needs about") as raised:
            store.upsert([record(i) for i in range(2, 34)])
        assert raised.value.free == space.RESERVE and raised.value.per_image > 0
        with pytest.raises(DiskFullError):
            store.ensure_room(32)
        assert store.count() == 1

"""``twinrank check``: damage is found, said in one line naming the file, and repaired
(issue 33, item 4).

One real store is built per module (200 small JPEGs, the tiny model, its fast query path)
and copied per test, then damaged the way a disk or a careless hand damages it: a
truncated Qdrant id tracker, flipped bytes in the deleted flags, in the vectors and in the
token file, truncated vector, payload and token files, a malformed ``twinrank.json``. Real
``twinrank`` processes check and search it: every case ends in a sentence naming the file,
never a traceback and never a silent answer from a store known to be damaged; and
``--repair`` gives back exactly the clean collection.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from twinrank.ingest.repair import RepairJob, repair_store
from twinrank.store import EdgeStore
from twinrank.store.check import check_store
from twinrank.store.lease import sparse_copy
from twinrank.store.record import REPAIRED_DIR, finish_swap, mark_ready, read_points

IMAGES = 200
ENV = {**os.environ, "TWINRANK_STORE_WAIT_S": "60"}


def twinrank(*args: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("twinrank")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "twinrank.cli"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=300,
                          env=ENV)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean store of 200 JPEGs (``built / "store"``) and the photos (``built / "photos"``)."""
    root = tmp_path_factory.mktemp("check")
    photos = root / "photos"
    photos.mkdir()
    rng = np.random.default_rng(4)
    for i in range(IMAGES):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
            photos / f"{i:03d}.jpg", quality=90)
    done = twinrank("ingest", str(photos), "--store", str(root / "store"), "--model",
                    "twinrank-tiny", "--no-progress")
    assert done.returncode == 0, done.stderr[-2000:]
    return root


@pytest.fixture
def store(built: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "store"
    shutil.copytree(built / "store", copy, copy_function=sparse_copy)
    return copy


def clean_points(folder: Path) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
    """id -> (paths, image vector): what a repair must give back."""
    with EdgeStore.open(folder) as opened:
        payloads = dict(opened.iter_payloads())
        vectors = opened.get_vectors(list(payloads))
    return {i: (tuple(sorted(p["paths"])), vectors[i]) for i, p in payloads.items()}


def assert_same_points(found: dict[str, tuple[tuple[str, ...], np.ndarray]],
                       clean: dict[str, tuple[tuple[str, ...], np.ndarray]]) -> None:
    """The same points with the same paths, and their vectors equal but for the last bits
    (an image embedded again in another batch)."""
    assert found.keys() == clean.keys()
    for point_id, (paths, vector) in clean.items():
        assert found[point_id][0] == paths
        np.testing.assert_allclose(found[point_id][1], vector, atol=1e-5)


def segment(store: Path) -> Path:
    return next((store / "shard" / "segments").iterdir())


def flip(path: Path, count: int, end: int, start: int = 0) -> None:
    chosen = random.Random(0)
    with path.open("r+b") as handle:
        for _ in range(count):
            offset = chosen.randrange(start, end)
            handle.seek(offset)
            byte = handle.read(1)[0]
            handle.seek(offset)
            handle.write(bytes([byte ^ 0xFF]))


def truncate(path: Path, size: int) -> None:
    os.truncate(path, size)


# (damage, the file the sentence must name, whether a search says so before any check)
DAMAGE = {
    "id tracker truncated": (lambda s: truncate(segment(s) / "mutable_id_tracker.mappings",
                                                500), "mutable_id_tracker.mappings", True),
    "deleted flags flipped": (lambda s: flip(next(segment(s).glob(
        "vector_storage-image/deleted/flags_*.dat")), 12, IMAGES // 8),
        "vector_storage-image/deleted/flags_a.dat", True),
    "vectors flipped": (lambda s: flip(segment(s) / "vector_storage-image/vectors/chunk_0.mmap",
                                       30, IMAGES * 256),
                        "vector_storage-image/vectors/chunk_0.mmap", False),
    "vector file truncated": (lambda s: truncate(
        segment(s) / "vector_storage-image/vectors/chunk_0.mmap", 30_000),
        "vector_storage-image/vectors/chunk_0.mmap", True),
    "payload file truncated": (lambda s: truncate(segment(s) / "payload_storage/page_0.dat",
                                                  30_000), "payload_storage/page_0.dat", True),
    "token file truncated": (lambda s: truncate(s / "tokens.bin", (s / "tokens.bin").stat()
                                                .st_size // 2), "tokens.bin", False),
    "token file flipped": (lambda s: flip(s / "tokens.bin", 20,
                                          (s / "tokens.bin").stat().st_size, 64),
                           "tokens.bin", False),
}


def search(store: Path) -> subprocess.CompletedProcess[str]:
    return twinrank("search", "a photo", "--store", str(store), "-k", "3")


def assert_one_sentence(done: subprocess.CompletedProcess[str], names: str) -> None:
    """No traceback, and a line that names the file."""
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    said = [line for line in (done.stdout + done.stderr).splitlines() if names in line]
    assert said, (done.stdout, done.stderr)


def test_a_clean_store_checks_clean(store: Path) -> None:
    done = twinrank("check", str(store))
    assert done.returncode == 0
    assert done.stdout.splitlines() == [
        f"{store}: {IMAGES} images; every vector, token set and payload is intact against "
        f"the checksums written at ingest, the count matches points.json and twinrank.json "
        f"is valid."]
    assert read_points(store) == (IMAGES, IMAGES)


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damage_is_said_in_one_line_and_repaired(case: str, store: Path, built: Path) -> None:
    damage, names, said_on_open = DAMAGE[case]
    clean = clean_points(built / "store")
    damage(store)
    if said_on_open:  # found by the store itself, before any check
        found = search(store)
        assert_one_sentence(found, names)

    checked = twinrank("check", str(store))
    assert checked.returncode == 1 and "Traceback" not in checked.stderr
    lines = checked.stdout.splitlines()
    assert len(lines) == 1 and names in lines[0] and "--repair" in lines[0], lines
    # known to be damaged now: no search answers without saying so
    after = search(store)
    assert_one_sentence(after, names)
    assert "is damaged" in after.stderr

    lines_out, intact = repair_store(RepairJob(store))
    assert intact, lines_out
    assert_same_points(clean_points(store), clean)
    assert check_store(store).ok
    again = search(store)
    assert again.returncode == 0 and "damaged" not in again.stderr


@pytest.mark.parametrize("content", [b'{"model_id": 5}', b"[1, 2]", bytes(range(256)) * 3])
def test_a_malformed_record_names_its_file(content: bytes, store: Path) -> None:
    (store / "twinrank.json").write_bytes(content)
    for done in (search(store), twinrank("ingest", str(store.parent), "--store", str(store)),
                 twinrank("check", str(store))):
        assert done.returncode == 1
        assert_one_sentence(done, f"{store}/twinrank.json" if "check" not in done.args
                            else "twinrank.json")
    repaired = twinrank("check", str(store), "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert repaired.stdout.splitlines()[0] == \
        f"Restored {store}/twinrank.json from twinrank.backup.json."
    assert search(store).returncode == 0


def test_repair_drops_what_is_damaged_when_its_files_are_gone(store: Path,
                                                              built: Path) -> None:
    flip(segment(store) / "vector_storage-image/vectors/chunk_0.mmap", 30, IMAGES * 256)
    damaged = check_store(store).damaged_ids()
    with EdgeStore.open(store) as opened:
        gone = opened.get_payloads(sorted(damaged)[:3])
    moved = store.parent / "moved"
    moved.mkdir()
    for payload in gone.values():
        shutil.move(payload["paths"][0], moved)
    try:
        done = twinrank("check", str(store), "--repair")
    finally:
        for name in os.listdir(moved):
            shutil.move(moved / name, built / "photos" / name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"dropped {len(gone)} whose files are gone" in done.stdout
    with EdgeStore.open(store) as opened:
        assert opened.count() == IMAGES - len(gone)
        assert not opened.get_payloads(list(gone))


def test_an_interrupted_swap_is_finished_on_open(store: Path, tmp_path: Path) -> None:
    rebuilt = store / REPAIRED_DIR
    shutil.copytree(store, tmp_path / "copy", copy_function=sparse_copy)
    rebuilt.mkdir()
    for name in ("shard", "tokens.bin", "tokens.free", "points.json", "twinrank.backup.json",
                 "twinrank.json"):
        os.replace(tmp_path / "copy" / name, rebuilt / name)
    mark_ready(rebuilt)
    shutil.rmtree(store / "shard")  # killed after the old shard went, before the new came
    with EdgeStore.open(store) as opened:
        assert opened.count() == IMAGES
    assert not rebuilt.exists()
    assert not finish_swap(store)


def test_the_count_record_stands_across_a_write_that_was_cut_short(store: Path) -> None:
    with EdgeStore.open(store) as opened:
        payloads = dict(opened.iter_payloads())
        victim = next(iter(payloads))
        opened.delete([victim])
        assert read_points(store) == (IMAGES - 1, IMAGES - 1)
    # a delete killed after it widened the record and before Qdrant deleted anything
    (store / "points.json").write_text(json.dumps({"low": IMAGES - 3, "high": IMAGES - 1}))
    with EdgeStore.open(store) as opened:
        assert opened.damage is None

"""Sharing stores: the UI open while an ingest writes (two processes), many query threads."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests.test_store import BACKENDS, INFO, open_backend, records
from twinrank.store import EdgeStore, StoreBusyError, open_store

ROOT = Path(__file__).resolve().parents[1]

WRITER = """
import sys, time
sys.path.insert(0, {root!r})
from twinrank.store import open_store
from tests.test_store import INFO, records
store = open_store({folder!r}, INFO)
data = records({total})
for start in range(0, len(data), 20):
    store.upsert(data[start:start + 20])
    store.flush()
    time.sleep(0.05)
store.close()
print("written", len(data))
"""


def test_ui_reads_while_another_process_ingests(tmp_path):
    """The reader keeps its store open; the writer gets the folder handed over, and back."""
    folder = tmp_path / "store"
    reader = open_store(folder, INFO)
    reader.upsert(records(1))  # the collection exists before the ingest starts
    query = records(1)[0].image_vector
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER.format(root=str(ROOT), folder=str(folder), total=200)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    counts = []
    while writer.poll() is None:
        counts.append(reader.count())
        assert reader.search(query, 1)[0].id == records(1)[0].id
        time.sleep(0.02)
    out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err
    assert "written 200" in out
    assert counts == sorted(counts)  # the reader never saw a write go missing
    assert reader.count() == 200  # ...and sees the whole ingest once it is done
    assert {h.id for h in reader.search(query, 200)} == {r.id for r in records(200)}
    reader.close()
    reopened = open_store(folder)
    assert reopened.count() == 200  # nothing lost or corrupted on disk
    reopened.close()


def test_a_holder_that_never_hands_over_gives_a_clear_busy_error(tmp_path):
    folder = tmp_path / "store"
    holder = EdgeStore.open(folder, INFO)
    holder.upsert(records(3))
    entered, leave = threading.Event(), threading.Event()

    def long_operation() -> None:
        with holder.exclusive():  # e.g. an optimise that takes minutes
            entered.set()
            leave.wait(10)

    thread = threading.Thread(target=long_operation)
    thread.start()
    entered.wait(5)
    started = time.monotonic()
    try:
        with pytest.raises(StoreBusyError, match="in use by another process"):
            EdgeStore.open(folder, wait_s=0.5)
    finally:
        leave.set()
        thread.join()
    assert time.monotonic() - started < 5
    late = EdgeStore.open(folder, wait_s=5)  # once the operation ends, it is handed over
    assert late.count() == 3
    late.close()
    holder.close()


@pytest.mark.parametrize("kind", BACKENDS)
def test_many_threads_querying_get_the_serial_answers(kind, tmp_path):
    store = open_backend(kind, tmp_path)
    store.upsert(records(200))
    queries = np.random.default_rng(3).standard_normal((64, INFO.vector_size))
    expected = [[h.id for h in store.search(q, 10)] for q in queries]
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(lambda q: [h.id for h in store.search(q, 10)], queries))
    assert got == expected
    store.close()

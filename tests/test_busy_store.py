"""A busy store never fails a search (issue 33, item 3): real processes, the real store.

While one process writes an embedded store (an ingest), `twinrank search` processes read
through it (``store.serve``) instead of asking for the folder: none fails, even with a
short wait budget, nothing written is lost or duplicated, and a process that must wait
says once, in one line, what it waits for.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import make_image
from tests.test_store import INFO, records
from twinrank.ingest.job import IngestJob, ingest_folder
from twinrank.ingest.runner import IngestConfig
from twinrank.store import EdgeStore, StoreBusyError, open_store
from twinrank.store.filters import SearchFilter
from twinrank.store.schema import SearchPlan
from twinrank.store.serve import SOCKET_FILE, decode, encode

ROOT = Path(__file__).resolve().parents[1]
WAITING = "Waiting for the store"

# An ingest as the store sees it (upserts of new images with tokens, batch after batch,
# until told to stop), without the seconds a real one spends importing torch and a model.
WRITER = """
import sys, time, uuid
from pathlib import Path
import numpy as np
sys.path.insert(0, {root!r})
from twinrank.store import PointRecord, open_store
from twinrank.store.filters import ancestor_folders
store = open_store({folder!r})
info = store.info
rng = np.random.default_rng(7)
ids = []
for batch in range(1000):
    if Path({stop!r}).exists():
        break
    points = []
    for i in range(batch * 10, batch * 10 + 10):
        vector = rng.standard_normal(info.vector_size).astype(np.float32)
        path = f"/written/{{i // 50}}/{{i}}.png"
        points.append(PointRecord(
            str(uuid.UUID(int=10**6 + i)), vector / np.linalg.norm(vector),
            rng.standard_normal((info.token_count, info.token_width)).astype(np.float32),
            {{"paths": [path], "folders": ancestor_folders(path), "size": 1000,
              "format": "png"}}))
    store.upsert(points)
    ids += [p.id for p in points]
    if batch == 0:
        print("started", flush=True)
    time.sleep({pause})
store.close()
print("written", len(ids), flush=True)
"""

# Holds the store in one step no reader may see half of, as a long optimise does.
HOLDER = """
import sys, time
sys.path.insert(0, {root!r})
from twinrank.store import open_store
store = open_store({folder!r})
store.count()
with store.exclusive():
    print("holding", flush=True)
    time.sleep({seconds})
print("done", flush=True)
store.close()
"""

# Asks for the folder at once (a step, as a writer does), with no read before it.
NEXT_HOLDER = """
import sys, time
sys.path.insert(0, {root!r})
from pathlib import Path
from qdrant_edge import EdgeShard
from twinrank.store.edge import SHARD_DIR, EdgeStore, _settling, _token_file, read_info
from twinrank.store.lease import ShardLease
folder = Path({folder!r})
info = read_info(folder)
tokens = _token_file(folder, info)
lease = ShardLease(folder, _settling(lambda: EdgeShard.load(str(folder / SHARD_DIR)), tokens))
store = EdgeStore(folder, lease, info, tokens)
print("asking", flush=True)
with store.exclusive():
    time.sleep({seconds})
store.close()
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 24-image collection of the tiny model, with its fast query export."""
    root = tmp_path_factory.mktemp("busy")
    for i in range(24):
        make_image(root / "photos" / f"{i}.png", seed=300 + i)
    ingest_folder(IngestJob(IngestConfig(root / "photos", progress=False), root / "store",
                            model="twinrank-tiny"))
    return root / "store"


@pytest.fixture
def store(built: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "store"
    shutil.copytree(built, copy)
    return copy


def _start(script: str, wait_s: float = 15.0) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=os.environ | {"TWINRANK_STORE_WAIT_S": str(wait_s)})


def _searches(store: Path, n: int, wait_s: float) -> list[subprocess.Popen[str]]:
    command = [sys.executable, str(ROOT / "cli.py"), "search", "a red block", "--store",
               str(store), "-k", "5"]
    return [subprocess.Popen(command, cwd=ROOT, text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE,
                             env=os.environ | {"TWINRANK_STORE_WAIT_S": str(wait_s)})
            for _ in range(n)]


def _finished(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=120)
    return process.returncode, out, err


def _hits(out: str) -> list[str]:
    return [line for line in out.splitlines() if ".png" in line]


def test_searches_during_an_ingest_all_succeed_and_nothing_is_lost(store: Path) -> None:
    stop = store.parent / "stop"
    writer = _start(WRITER.format(root=str(ROOT), folder=str(store), stop=str(stop), pause=0.1))
    assert writer.stdout is not None and writer.stderr is not None
    assert writer.stdout.readline().strip() == "started", writer.stderr.read()
    searches = _searches(store, 6, wait_s=1.0)  # a hand-over took seconds each under load
    results = [_finished(s) for s in searches]
    stop.touch()
    code, out, err = _finished(writer)
    assert code == 0 and out.split()[-2] == "written", err[-2000:]
    written = int(out.split()[-1])
    for code, out, err in results:
        assert code == 0, err[-2000:]
        assert len(_hits(out)) == 5, out
        assert WAITING not in err, err  # the writer held the store throughout: no wait
    with open_store(store) as opened:
        ids = [point_id for point_id, _ in opened.iter_payloads()]
        assert opened.count() == len(ids) == 24 + written
        assert len(set(ids)) == len(ids)


def test_a_waiting_search_says_once_what_it_waits_for(store: Path) -> None:
    holder = _start(HOLDER.format(root=str(ROOT), folder=str(store), seconds=3))
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "holding"
    searches = _searches(store, 3, wait_s=15.0)
    results = [_finished(s) for s in searches]
    assert _finished(holder)[0] == 0
    for code, out, err in results:
        assert code == 0, err[-2000:]
        assert len(_hits(out)) == 5, out
        waits = [line for line in err.splitlines() if WAITING in line]
        assert len(waits) == 1, err
        assert str(store) in waits[0] and f"process {holder.pid}" in waits[0], waits[0]


def test_a_killed_holder_leaves_nothing_in_the_way(store: Path) -> None:
    holder = _start(HOLDER.format(root=str(ROOT), folder=str(store), seconds=60))
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "holding"
    assert (store / SOCKET_FILE).exists()
    holder.send_signal(signal.SIGKILL)
    holder.wait(30)
    assert (store / SOCKET_FILE).exists()  # a dead holder's socket stays behind
    started = time.monotonic()
    code, out, err = _finished(_searches(store, 1, wait_s=5.0)[0])
    assert code == 0 and len(_hits(out)) == 5, err[-2000:]
    assert time.monotonic() - started < 30


def test_a_second_handle_reads_through_the_holder(tmp_path: Path) -> None:
    """Two stores on one folder in one process: the second reads through the first, and
    gets what the first would answer, filters, tokens, vectors and payload pages included."""
    holder = EdgeStore.open(tmp_path / "edge", INFO)
    data = records(1500)
    holder.upsert(data)
    reader = EdgeStore.open(tmp_path / "edge", wait_s=2)
    assert holder._lease.is_open and not reader._lease.is_open
    query = data[5].image_vector
    only = SearchFilter(folder="/photos/2021", formats=("jpg",))
    for search_filter in (None, only):
        want = holder.search(query, 10, search_filter)
        got = reader.search(query, 10, search_filter)
        assert [(h.id, h.score, h.payload) for h in got] == \
            [(h.id, h.score, h.payload) for h in want]
    ids = [p.id for p in data[:7]]
    assert reader.count() == 1500
    assert reader.get_payloads(ids) == holder.get_payloads(ids)
    for got_tokens, want_tokens in ((reader.get_tokens(ids), holder.get_tokens(ids)),
                                    (reader.get_vectors(ids), holder.get_vectors(ids))):
        assert got_tokens.keys() == want_tokens.keys() == set(ids)
        assert all(np.array_equal(got_tokens[i], want_tokens[i]) for i in ids)
    assert dict(reader.iter_payloads()) == dict(holder.iter_payloads())
    assert not reader._lease.is_open  # it never asked for the folder
    holder.close()
    assert reader.count() == 1500  # the holder went: the reader opens the folder itself
    assert reader._lease.is_open
    reader.close()


def test_a_reader_waits_for_a_step_no_one_may_see_half_of(tmp_path: Path) -> None:
    holder = EdgeStore.open(tmp_path / "edge", INFO)
    holder.upsert(records(3))
    reader = EdgeStore.open(tmp_path / "edge", wait_s=0.5)
    with holder.exclusive():
        with pytest.raises(StoreBusyError, match="in use by another process"):
            reader.count()
    assert reader.count() == 3
    reader.close()
    holder.close()


def test_requests_cross_the_socket_unchanged() -> None:
    from datetime import date, datetime, timezone

    sent = {"vector": np.arange(5, dtype=np.float32), "plan": SearchPlan(True, 64, 30),
            "filter": SearchFilter(folder="/a", after=date(2021, 1, 2),
                                   before=datetime(2022, 3, 4, 5, 6, tzinfo=timezone.utc),
                                   formats=("jpeg", "png"), min_size=3),
            "ids": ["x", "y"], "nested": {"files": {"/a/b.png": {"size": 1}}},
            "tokens": {"x": np.ones((2, 3), dtype=np.float16)}, "none": None}
    meta, arrays = encode(sent)
    got = decode(meta, arrays)
    assert got["plan"] == sent["plan"] and got["filter"] == sent["filter"]
    assert got["ids"] == sent["ids"] and got["nested"] == sent["nested"]
    assert got["none"] is None
    assert np.array_equal(got["vector"], sent["vector"])
    assert got["tokens"]["x"].dtype == np.float16 and got["tokens"]["x"].shape == (2, 3)


def test_a_holder_busy_reading_hands_over_to_a_writer(tmp_path: Path) -> None:
    """A holder whose own reads never pause (a SearchClient in a loop) still lets a
    writer (an ingest) in, and then reads through it."""
    holder = EdgeStore.open(tmp_path / "edge", INFO)
    data = records(400)
    holder.upsert(data[:200])
    stop, seen = threading.Event(), []

    def reading() -> None:
        while not stop.is_set():
            seen.append(holder.count())
            holder.search(data[0].image_vector, 5)

    thread = threading.Thread(target=reading)
    thread.start()
    try:
        writer = EdgeStore.open(tmp_path / "edge", wait_s=3)
        writer.upsert(data[200:])  # it asks for the folder; the busy holder lets go
        assert writer._lease.is_open
        time.sleep(0.3)
    finally:
        stop.set()
        thread.join()
    assert seen == sorted(seen) and seen[-1] == 400  # read through the writer meanwhile
    assert not holder._lease.is_open
    writer.close()
    holder.close()


def test_a_read_waits_while_the_folder_changes_hands(store: Path) -> None:
    """Two holders in turn, each in a step no reader may see half of: the reader's wait
    outlasts its budget, but the second holder is progress, so it waits on."""
    first = _start(HOLDER.format(root=str(ROOT), folder=str(store), seconds=2))
    assert first.stdout is not None and first.stdout.readline().strip() == "holding"
    second = _start(NEXT_HOLDER.format(root=str(ROOT), folder=str(store), seconds=1.5))
    assert second.stdout is not None and second.stdout.readline().strip() == "asking"
    time.sleep(0.3)  # its request is filed: the reader will not take the folder between
    began = time.monotonic()
    reader = EdgeStore.open(store, wait_s=3)  # its first read waits through both holders
    assert reader.count() == 24
    assert time.monotonic() - began > 3  # longer than its budget, since hands changed
    for holder in (first, second):
        assert _finished(holder)[0] == 0
    reader.close()

"""The embedded store's token side file (``store.tokens``): reads, space, older collections,
RAM on open, and its crash rules with real processes killed by SIGKILL mid-write."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from twinrank.store import CollectionInfo, EdgeStore, PointRecord
from twinrank.store.edge import META_FILE, _token_slots
from twinrank.store.schema import TOKENS_IN_QDRANT
from twinrank.store.tokens import INTENT_FILE, TOKEN_SLOT

ROOT = Path(__file__).resolve().parents[1]
INFO = CollectionInfo(model_id="model-a", vector_size=8, token_count=16, token_width=32)


def tokens_of(point_id: str, shape: tuple[int, int] = (16, 32), version: int = 0) -> np.ndarray:
    """The tokens a point gets in these tests: fixed by its id (and ``version``)."""
    seed = uuid.UUID(point_id).int % 2**32 + 7919 * version
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def record(i: int, version: int = 0, with_tokens: bool = True) -> PointRecord:
    point_id = str(uuid.UUID(int=i + 1))
    vector = np.random.default_rng(i).standard_normal(INFO.vector_size).astype(np.float32)
    return PointRecord(point_id, vector / np.linalg.norm(vector),
                       tokens_of(point_id, version=version) if with_tokens else None,
                       {"paths": [f"/photos/img{i}.jpg"], "folders": ["/", "/photos"],
                        "format": "jpeg"})


def assert_tokens_consistent(store: EdgeStore, expected: dict[str, np.ndarray] | None = None
                             ) -> None:
    """The crash rules, as a user would notice them: every point's tokens read back (equal
    to ``expected`` when given), no record is tagged for an id that is not a point naming
    it, no free slot is in use, and nothing is left in doubt."""
    ids = [point_id for point_id, _ in store.iter_payloads()]
    tokens = store.get_tokens(ids)
    assert sorted(tokens) == sorted(ids), "a point lost its tokens"
    if expected is not None:
        assert sorted(ids) == sorted(expected)
        for point_id in ids:
            assert tokens[point_id].dtype == np.float16
            assert np.array_equal(tokens[point_id], expected[point_id].astype(np.float16))
    side = store._tokens
    assert side is not None
    with store._lease.hold() as shard:
        named = _token_slots(shard, ids)
    tags = side.tags()
    assert {slot: named.get(point_id) for slot, point_id in tags.items()} == \
        {slot: slot for slot in tags}, "a record is tagged for an id that is not its point"
    assert sorted(tags) == sorted(named.values())
    assert not set(side.free_slots()) & set(tags)
    assert not (store.folder / INTENT_FILE).exists()


def test_tokens_read_back_from_the_side_file_not_from_qdrant(tmp_path):
    store = EdgeStore.open(tmp_path / "s", INFO)
    made = [record(i) for i in range(12)]
    store.upsert(made)
    assert_tokens_consistent(store, {r.id: r.image_tokens for r in made})
    with store._lease.hold() as shard:
        stored = shard.retrieve([made[0].id], True, True)[0]
    assert set(stored.vector) == {"image"}  # no multivector in the shard
    assert stored.payload[TOKEN_SLOT] == 0
    hits = store.search(made[0].image_vector, 3)
    assert hits[0].id == made[0].id and TOKEN_SLOT not in hits[0].payload
    assert TOKEN_SLOT not in store.get_payloads([made[0].id])[made[0].id]
    assert all(TOKEN_SLOT not in payload for _, payload in store.iter_payloads())
    assert store.get_tokens(["00000000-0000-0000-0000-0000000000ff"]) == {}
    store.close()
    reopened = EdgeStore.open(tmp_path / "s")
    assert reopened.info.token_layout == "file"
    assert_tokens_consistent(reopened, {r.id: r.image_tokens for r in made})
    reopened.close()


def test_deleting_frees_records_and_new_ones_reuse_them(tmp_path):
    store = EdgeStore.open(tmp_path / "s", INFO)
    store.upsert([record(i) for i in range(10)])
    store.delete([record(i).id for i in range(2, 6)])
    assert store._tokens is not None and store._tokens.free_slots() == [2, 3, 4, 5]
    store.upsert([record(i) for i in range(10, 15)])  # four reuse freed slots, one appends
    assert store._tokens.free_slots() == [] and store._tokens.slot_count() == 11
    store.upsert([record(i, version=1) for i in range(10, 15)])  # re-ingested: new tokens
    expected = {record(i).id: record(i).image_tokens for i in (0, 1, 6, 7, 8, 9)}
    expected |= {record(i).id: record(i, version=1).image_tokens for i in range(10, 15)}
    assert_tokens_consistent(store, expected)
    assert store._tokens.slot_count() <= 16
    store.upsert([record(i, with_tokens=False) for i in (0, 1)])  # upserted without tokens
    assert sorted(store.get_tokens([record(0).id, record(6).id])) == [record(6).id]
    assert len(store._tokens.free_slots()) >= 2
    store.close()


def test_a_payload_rewrite_keeps_the_points_tokens(tmp_path):
    store = EdgeStore.open(tmp_path / "s", INFO)
    made = record(3)
    store.upsert([made])
    store.set_payload(made.id, {"paths": ["/elsewhere/x.jpg"], "folders": ["/", "/elsewhere"],
                                "format": "jpeg", TOKEN_SLOT: 99})
    assert store.get_payloads([made.id])[made.id]["paths"] == ["/elsewhere/x.jpg"]
    assert_tokens_consistent(store, {made.id: made.image_tokens})
    store.close()


def test_a_record_tagged_for_another_point_reads_as_missing(tmp_path):
    store = EdgeStore.open(tmp_path / "s", INFO)
    store.upsert([record(0), record(1)])
    side = store._tokens
    assert side is not None
    with store._lease.hold() as shard:
        slots = _token_slots(shard, [record(0).id, record(1).id])
    swapped = {record(0).id: slots[record(1).id], record(1).id: slots[record(0).id]}
    assert side.read(swapped) == {}
    store.close()


def test_a_collection_made_before_the_side_file_keeps_its_multivector(tmp_path):
    folder = tmp_path / "old"
    store = EdgeStore.open(folder, replace(INFO, token_layout=TOKENS_IN_QDRANT))
    store.upsert([record(i) for i in range(4)])
    store.close()
    meta = json.loads((folder / META_FILE).read_text())
    del meta["token_layout"]  # as an older twinrank wrote it
    (folder / META_FILE).write_text(json.dumps(meta))
    older = EdgeStore.open(folder, INFO)  # ingest opens it with today's identity
    assert older.info.token_layout == TOKENS_IN_QDRANT and older._tokens is None
    older.upsert([record(i) for i in range(4, 6)])
    tokens = older.get_tokens([record(i).id for i in range(6)])
    assert len(tokens) == 6
    for i in range(6):
        assert np.array_equal(tokens[record(i).id],
                              record(i).image_tokens.astype(np.float16).astype(np.float32))
    older.close()
    assert not (folder / "tokens.bin").exists()


RSS_PROBE = textwrap.dedent("""
    import sys
    import qdrant_edge  # the library's own cost is not the store's
    from twinrank.store import EdgeStore

    def rss_mb():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

    before = rss_mb()
    store = EdgeStore.open(sys.argv[1])
    store.count()
    print(round(rss_mb() - before, 1), store._tokens.slot_count())
""")


def test_opening_a_store_with_many_tokens_adds_little_ram(tmp_path):
    info = replace(INFO, token_count=577, token_width=768)  # BLIP-base geometry
    store = EdgeStore.open(tmp_path / "s", info)
    rng = np.random.default_rng(0)
    tokens = rng.standard_normal((577, 768)).astype(np.float16)
    for start in range(0, 160, 20):
        store.upsert([replace(record(i, with_tokens=False), image_tokens=tokens)
                      for i in range(start, start + 20)])
    store.close()
    assert (tmp_path / "s" / "tokens.bin").stat().st_size > 140e6  # more than the limit
    probe = subprocess.run([sys.executable, "-c", RSS_PROBE, str(tmp_path / "s")], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr[-2000:]
    added_mb, slots = probe.stdout.split()
    assert int(slots) == 160
    assert float(added_mb) <= 100


# A writer killed mid-write, in its own process. The plan (the same in every run, so a rerun
# is a re-ingest): upsert points 0-29 in batches, delete 0-9 (a prune), upsert 30-44 and
# re-upsert 10-14 with new tokens. KILL=(what, n) kills the process at the n-th such step.
WRITER = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, sys.argv[3])
    from test_token_file import INFO, record
    from twinrank.store import EdgeStore
    from twinrank.store import tokens as side

    what, n = sys.argv[2].split(":")
    seen = [0]

    def killing(original, after=False, torn=False, in_doubt=False):
        def step(*args):
            if in_doubt and not (args[0].folder / side.INTENT_FILE).exists():
                return original(*args)  # a settle with nothing to do (on open)
            seen[0] += 1
            hit = seen[0] == int(n)
            if hit and torn:  # half of the bytes reach the file
                os.pwrite(args[0], bytes(args[1])[: len(args[1]) // 2], args[2])
            if hit and not after:
                os.kill(os.getpid(), signal.SIGKILL)
            result = original(*args)
            if hit:
                os.kill(os.getpid(), signal.SIGKILL)
            return result
        return step

    steps = {  # where: (owner, name, how)
        "intent": (side.TokenFile, "_save_intent", {"after": True}),
        "write": (side, "_write_all", {"torn": True}),
        "written": (side, "_write_all", {"after": True}),
        "settle": (side.TokenFile, "settle", {"in_doubt": True}),
        "free": (side.TokenFile, "_save_free", {"after": True}),
    }
    if what in steps:
        owner, name, how = steps[what]
        setattr(owner, name, killing(getattr(owner, name), **how))

    store = EdgeStore.open(sys.argv[1], INFO)
    for start in range(0, 30, 5):
        store.upsert([record(i) for i in range(start, start + 5)])
    for start in range(0, 10, 5):
        store.delete([record(i).id for i in range(start, start + 5)])
    store.upsert([record(i) for i in range(30, 35)])
    store.upsert([record(i, version=1) for i in range(10, 15)])
    for start in range(35, 45, 5):
        store.upsert([record(i) for i in range(start, start + 5)])
    store.close()
""")
FINAL = {record(i).id: record(i, version=1 if 10 <= i < 15 else 0).image_tokens
         for i in range(10, 45)}


def _write(folder: Path, kill: str) -> int:
    run = subprocess.run([sys.executable, "-c", WRITER, str(folder), kill, str(ROOT / "tests")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode in (0, -9), run.stderr[-2000:]
    return run.returncode


@pytest.mark.parametrize("kill", [
    "intent:2",  # a first upsert's intent saved, nothing written
    "write:3",  # a record half written (tokens torn, no tag)
    "written:10",  # a whole batch's records and tags written, the points not
    "settle:4",  # an upsert's points written, its intent not settled
    "free:3",  # a settle half done: the free list saved, the intent not removed
    "intent:8",  # a prune's intent saved, its points not deleted
    "settle:7",  # a prune's points deleted, their records still tagged
    "write:85",  # the re-ingest with new tokens, torn mid-batch
    "settle:10",  # the re-ingest written, the old records not freed
])
def test_a_writer_killed_at_any_step_leaves_every_point_its_tokens(tmp_path, kill):
    folder = tmp_path / "store"
    assert _write(folder, kill) == -9
    store = EdgeStore.open(folder)  # the next open settles what the kill left
    assert_tokens_consistent(store)
    for point_id, tokens in store.get_tokens([p for p, _ in store.iter_payloads()]).items():
        assert any(np.array_equal(tokens, tokens_of(point_id, version=v).astype(np.float16))
                   for v in (0, 1))  # before or after its re-ingest, never torn
    store.close()
    assert _write(folder, "none:0") == 0  # the run again, to the end
    store = EdgeStore.open(folder)
    assert_tokens_consistent(store, FINAL)  # as a clean build
    assert store._tokens is not None and store._tokens.slot_count() <= 45 + 5
    store.close()


def test_a_clean_build_of_the_writer_plan(tmp_path):
    assert _write(tmp_path / "store", "none:0") == 0
    store = EdgeStore.open(tmp_path / "store")
    assert_tokens_consistent(store, FINAL)
    assert store._tokens is not None and store._tokens.slot_count() == 35  # freed, reused
    store.close()

"""Both store back ends: one schema, the same answers, filters, identity, errors."""

from __future__ import annotations

import http.server
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict
from datetime import date
from pathlib import Path

import numpy as np
import pytest

from twinrank.store import (
    CollectionInfo,
    CollectionMismatchError,
    EdgeStore,
    PointRecord,
    RemoteStore,
    StoreError,
    open_store,
    search_plan,
)
from twinrank.store.filters import SearchFilter, ancestor_folders, indexed_payload

INFO = CollectionInfo(model_id="model-a", vector_size=16, token_count=4, token_width=8,
                      model_source="twinrank-tiny")
BACKENDS = ["edge", "local"]


def records(n: int = 60, seed: int = 0) -> list[PointRecord]:
    """Clustered unit vectors with payloads spread over folders, years, types and sizes."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((4, INFO.vector_size))
    out = []
    for i in range(n):
        vector = centres[i % 4] + 0.5 * rng.standard_normal(INFO.vector_size)
        path = f"/photos/{2020 + i % 3}/{'beach' if i % 2 else 'city'}/img{i}.jpg"
        payload = {
            "paths": [path], "folders": ancestor_folders(path), "size": 1000 * (i + 1),
            "format": "jpeg" if i % 3 else "png",
            "captured_at": f"{2020 + i % 3}-0{1 + i % 9}-15T12:00:00Z",
        }
        out.append(PointRecord(str(uuid.UUID(int=i + 1)),
                               (vector / np.linalg.norm(vector)).astype(np.float32),
                               rng.standard_normal((4, 8)).astype(np.float32), payload))
    return out


def open_backend(kind: str, where: Path, info: CollectionInfo | None = INFO):
    if kind == "edge":
        return open_store(where / "edge", info)
    return open_store("", info, url=f"path:{where / 'local'}", collection="photos")


@pytest.fixture(params=BACKENDS)
def filled(request, tmp_path) -> Iterator:
    store = open_backend(request.param, tmp_path)
    store.upsert(records())
    store.flush()
    yield store
    store.close()


def test_open_store_picks_the_back_end_by_location(tmp_path):
    edge = open_store(tmp_path / "folder", INFO)
    local = open_store(":memory:", INFO)
    assert isinstance(edge, EdgeStore) and isinstance(local, RemoteStore)
    edge.close()
    local.close()


@pytest.mark.parametrize("kind", BACKENDS)
def test_identity_is_stored_with_the_collection(kind, tmp_path):
    store = open_backend(kind, tmp_path)
    store.upsert(records(5))
    store.close()
    reopened = open_backend(kind, tmp_path, info=None)
    assert reopened.info == INFO and reopened.count() == 5
    reopened.close()


@pytest.mark.parametrize("kind", BACKENDS)
def test_another_model_is_refused_naming_both(kind, tmp_path):
    open_backend(kind, tmp_path).close()
    other = CollectionInfo(model_id="model-b", vector_size=16, token_count=4, token_width=8)
    with pytest.raises(CollectionMismatchError, match="'model-a'.*'model-b'"):
        open_backend(kind, tmp_path, info=other)


def test_missing_collection_says_how_to_make_one(tmp_path):
    with pytest.raises(StoreError, match="twinrank ingest"):
        open_store(tmp_path / "nothing")
    with pytest.raises(StoreError, match="No collection 'photos'"):
        open_store("", url=f"path:{tmp_path / 'local'}", collection="photos")


def test_both_back_ends_give_the_same_answers(tmp_path):
    edge, local = open_backend("edge", tmp_path), open_backend("local", tmp_path)
    data = records()
    for store in (edge, local):
        store.upsert(data)
    queries = np.random.default_rng(1).standard_normal((8, INFO.vector_size))
    filters = [None, SearchFilter(folder="/photos/2021"), SearchFilter(formats=("jpg",)),
               SearchFilter(after=date(2021, 1, 1), before=date(2022, 1, 1), min_size=5000)]
    for query in queries:
        for search_filter in filters:
            a, b = edge.search(query, 10, search_filter), local.search(query, 10, search_filter)
            assert [h.id for h in a] == [h.id for h in b]
            assert np.allclose([h.score for h in a], [h.score for h in b], atol=1e-5)
            assert [h.payload for h in a] == [h.payload for h in b]
    ids = [r.id for r in data[:5]]
    assert _same_arrays(edge.get_tokens(ids), local.get_tokens(ids))
    assert _same_arrays(edge.get_vectors(ids), local.get_vectors(ids), atol=1e-6)
    assert sorted(edge.iter_payloads(), key=str) == sorted(local.iter_payloads(), key=str)
    edge.close()
    local.close()


def _same_arrays(a: dict, b: dict, atol: float = 0.0) -> bool:
    return a.keys() == b.keys() and all(np.allclose(a[k], b[k], atol=atol, rtol=0) for k in a)


def test_tokens_are_float16_on_both(filled):
    record = records()[0]
    stored = filled.get_tokens([record.id])[record.id]
    assert np.array_equal(stored, record.image_tokens.astype(np.float16).astype(np.float32))
    assert filled.info.bytes_per_image() == 4 * 8 * 2


def test_filters_match_their_payload_fields(filled):
    everything = {r.id: r.payload for r in records()}
    query = np.ones(INFO.vector_size, dtype=np.float32)
    cases = {
        SearchFilter(folder="/photos/2021"): lambda p: "/photos/2021" in p["folders"],
        SearchFilter(folder="/photos/2021/beach/"): lambda p: "/photos/2021/beach" in p["paths"][0],
        SearchFilter(formats=("PNG",)): lambda p: p["format"] == "png",
        SearchFilter(after=date(2021, 3, 1), before=date(2022, 1, 1)):
            lambda p: "2021-03-01" <= p["captured_at"] < "2022-01-01",
        SearchFilter(min_size=10_000, max_size=20_000): lambda p: 10_000 <= p["size"] <= 20_000,
    }
    for search_filter, wanted in cases.items():
        found = {h.id for h in filled.search(query, 100, search_filter)}
        assert found == {i for i, p in everything.items() if wanted(p)}, search_filter
        assert found


FOLDER_AND_TYPES = [SearchFilter(folder="/photos/2021", formats=("jpg",)),
                    SearchFilter(folder="/photos/2022/beach", formats=("png", "jpeg")),
                    SearchFilter(folder="/photos/2020", formats=("webp",))]


def _folder_and_type(search_filter: SearchFilter) -> Callable[[dict], bool]:
    folder, formats = search_filter.normalised_folder(), search_filter.normalised_formats()
    return lambda p: folder in p["folders"] and p["format"] in formats


def test_a_folder_and_type_filter_is_one_match_on_the_pairs_the_store_writes(filled):
    """A new collection's points carry ``folder_formats`` (the store derives it on every
    write), so folder and type are one condition, and it finds exactly those points."""
    assert filled.info.folder_formats
    everything = {r.id: r.payload for r in records()}
    stored = dict(filled.iter_payloads())
    assert stored == {i: indexed_payload(p) for i, p in everything.items()}
    assert stored[records()[1].id]["folder_formats"][-1] == "jpeg:/photos/2021/beach"
    query = np.ones(INFO.vector_size, dtype=np.float32)
    for search_filter in FOLDER_AND_TYPES:
        assert [c.key for c in search_filter.conditions(paired=True)] == ["folder_formats"]
        found = {h.id for h in filled.search(query, 100, search_filter)}
        wanted = _folder_and_type(search_filter)
        assert found == {i for i, p in everything.items() if wanted(p)}, search_filter
    first = records()[0]
    filled.set_payload(first.id, {**first.payload, "format": "webp"})  # the pairs follow
    webp = filled.search(query, 100, FOLDER_AND_TYPES[2])
    assert [h.id for h in webp] == [first.id]


def older_collection(kind: str, where: Path):
    """A collection as a twinrank before ``folder_formats`` left it: points without the
    pairs, no index on them, an identity without the key. Returned reopened."""
    store = open_backend(kind, where)
    store.upsert(records())
    ids = [r.id for r in records()]
    if isinstance(store, EdgeStore):
        from qdrant_edge import UpdateOperation

        with store._lease.hold() as shard:
            shard.update(UpdateOperation.delete_payload(ids, ["folder_formats"]))
            shard.update(UpdateOperation.delete_field_index("folder_formats"))
            assert "folder_formats" not in shard.info().payload_schema
    else:
        store._client.delete_payload(store.collection, keys=["folder_formats"], points=ids)
        with warnings.catch_warnings():  # local mode: "payload indexes have no effect"
            warnings.simplefilter("ignore", UserWarning)
            store._client.delete_payload_index(store.collection, "folder_formats")
    stored = {k: v for k, v in asdict(store.info).items() if k != "folder_formats"}
    assert CollectionInfo.from_dict(stored).folder_formats is False
    store._save_info(CollectionInfo.from_dict(stored))
    store.close()
    old = open_backend(kind, where, info=None)
    assert not old.info.folder_formats
    assert all("folder_formats" not in p for _, p in old.iter_payloads())
    return old


def assert_folder_and_type_filters_exact(store) -> None:
    everything = {r.id: r.payload for r in records()}
    query = np.ones(INFO.vector_size, dtype=np.float32)
    for search_filter in FOLDER_AND_TYPES:
        found = {h.id for h in store.search(query, 100, search_filter)}
        wanted = _folder_and_type(search_filter)
        assert found == {i for i, p in everything.items() if wanted(p)}, search_filter


@pytest.mark.parametrize("kind", BACKENDS)
def test_a_collection_made_before_the_pairs_filters_on_the_two_fields(kind, tmp_path):
    """Points written by an older twinrank have no ``folder_formats``: its identity says
    so, and a folder and type filter still finds them, through the two conditions."""
    old = older_collection(kind, tmp_path)
    assert_folder_and_type_filters_exact(old)
    old.close()


@pytest.mark.parametrize("kind", BACKENDS)
def test_an_older_collection_is_upgraded_to_the_pairs_and_an_interrupted_upgrade_resumes(
        kind, tmp_path, monkeypatch):
    """``pair_folders_and_types`` gives every point its pairs and only then flips the
    identity; cut after its first write, the flag stays off, every filter stays exact over
    the half-paired points, and the next call finishes (and the one after does nothing)."""
    from twinrank.store import schema

    old = older_collection(kind, tmp_path)
    monkeypatch.setattr(schema, "PAIRING_BATCH", 7)
    real_write, writes = old._set_payload_fields, []

    def cut_after_one(ids, fields):
        if writes:
            raise KeyboardInterrupt
        writes.append(list(ids))
        real_write(ids, fields)

    monkeypatch.setattr(old, "_set_payload_fields", cut_after_one)
    with pytest.raises(KeyboardInterrupt):
        old.pair_folders_and_types()
    assert not old.info.folder_formats and len(writes[0]) == 7
    paired = {i for i, p in old.iter_payloads() if "folder_formats" in p}
    assert paired == set(writes[0])
    assert_folder_and_type_filters_exact(old)
    monkeypatch.setattr(old, "_set_payload_fields", real_write)
    assert old.pair_folders_and_types() == len(records()) - 7  # the rest, not the 7 again
    assert old.info.folder_formats
    old.close()
    upgraded = open_backend(kind, tmp_path, info=None)  # the flag was stored
    assert upgraded.info.folder_formats
    assert dict(upgraded.iter_payloads()) == {r.id: indexed_payload(r.payload) for r in records()}
    for search_filter in FOLDER_AND_TYPES:
        assert [c.key for c in search_filter.conditions(paired=True)] == ["folder_formats"]
    assert_folder_and_type_filters_exact(upgraded)
    assert upgraded.pair_folders_and_types() == 0
    if isinstance(upgraded, EdgeStore):
        with upgraded._lease.hold() as shard:
            assert "folder_formats" in shard.info().payload_schema  # indexed again
    upgraded.close()


def test_set_payload_and_delete(filled):
    first, second = records()[:2]
    filled.set_payload(first.id, {**first.payload, "format": "webp"})
    filled.delete([second.id])
    assert filled.count() == 59
    assert filled.get_payloads([first.id, second.id]) == {
        first.id: indexed_payload({**first.payload, "format": "webp"})}
    hits = filled.search(np.ones(16), 5, SearchFilter(formats=("webp",)))
    assert [h.id for h in hits] == [first.id]


def test_small_collections_are_searched_exactly_large_ones_with_a_wide_beam():
    assert search_plan(1_000, 20).exact
    large = search_plan(1_000_000, 20)
    assert not large.exact and large.hnsw_ef is not None and large.hnsw_ef >= 8 * 20


def test_unreachable_server_fails_fast_and_clearly(tmp_path):
    started = time.monotonic()
    with pytest.raises(StoreError, match="Could not reach the Qdrant server at http://127.0.0.1:9"):
        open_store("", INFO, url="http://127.0.0.1:9", collection="photos")
    assert time.monotonic() - started < 10


class _Refuses(http.server.BaseHTTPRequestHandler):
    """A server that answers every request as Qdrant does for a wrong API key."""

    seen: list[str] = []

    def do_GET(self) -> None:
        _Refuses.seen.append(f"{self.command} {self.path}")
        self.send_response(401)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"status":{"error":"Must provide an API key or an Authorization"}}')

    do_PUT = do_POST = do_DELETE = do_PATCH = do_GET

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.filterwarnings("ignore:Api key is used with an insecure connection")
def test_wrong_api_key_is_a_clear_error_that_never_shows_the_key(monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refuses)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("TWINRANK_QDRANT_API_KEY", "very-secret-key")
    _Refuses.seen.clear()
    try:
        with pytest.raises(StoreError, match="refused the API key") as caught:
            open_store("", INFO, url=f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
    assert "very-secret-key" not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert all(line.startswith("GET") for line in _Refuses.seen)  # nothing was written


def test_a_far_query_is_searched_again_exactly():
    from twinrank.store.schema import FAR_QUERY_COSINE, SearchPlan, StoredHit, planned_search

    plans: list[SearchPlan] = []

    def run(best: float):
        def search(plan: SearchPlan) -> list[StoredHit]:
            plans.append(plan)
            return [StoredHit("a", best, {})]
        return search

    planned_search(run(FAR_QUERY_COSINE + 0.2), 100_000, 20)  # near: HNSW only
    assert [p.exact for p in plans] == [False]
    plans.clear()
    planned_search(run(FAR_QUERY_COSINE - 0.2), 100_000, 20)  # far: HNSW, then exact
    assert [p.exact for p in plans] == [False, True]
    plans.clear()
    planned_search(run(0.1), 5_000, 20)  # small: exact at once
    assert [p.exact for p in plans] == [True]

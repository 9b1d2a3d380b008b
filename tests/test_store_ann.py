"""Text queries across the modality gap: the ``centred`` vector and the two-stage search.

Real Qdrant Edge and qdrant-client's local mode (the server's stand-in: no Qdrant server
binary can be installed here) on small synthetic collections whose images sit in a narrow
cone and whose text queries sit in another, as CLIP's do.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

from twinrank.store import CollectionInfo, PointRecord, open_store, search_plan
from twinrank.store import schema as schema_module
from twinrank.store.filters import SearchFilter
from twinrank.store.schema import CENTRED_VECTOR, SearchPlan, centre, crosses_gap, unit_rows

DIM = 48
K = 10
BACKENDS = ["edge", "server"]


def gap_vectors(n: int, seed: int = 0, shift: float = 0.0,
                cone: float = 1.2) -> dict[str, np.ndarray]:
    """Images in a clustered cone, text queries in another cone, generic-caption texts
    (``cone=0``: images spread over the sphere, as the shipped demo model's are)."""
    rng = np.random.default_rng(seed)
    image_mean, text_mean, drift = unit_rows(rng.standard_normal((3, DIM)))
    centres = unit_rows(rng.standard_normal((max(n // 50, 4), DIM)))

    def texts(count: int) -> np.ndarray:
        which = rng.integers(0, len(centres), count)
        return unit_rows(0.4 * image_mean + 2.0 * text_mean + 0.45 * centres[which]
                         + rng.standard_normal((count, DIM)) / np.sqrt(DIM))

    which = rng.integers(0, len(centres), n)
    images = unit_rows(cone * image_mean + shift * drift + centres[which]
                       + 1.1 * rng.standard_normal((n, DIM)) / np.sqrt(DIM))
    return {"images": images, "queries": texts(12), "generic": texts(200)}


def info_for(data: dict[str, np.ndarray] | None) -> CollectionInfo:
    text_mean = None if data is None else tuple(data["generic"].mean(0).tolist())
    return CollectionInfo("gap-model", DIM, 2, 4, text_mean=text_mean)


def point_id(i: int) -> str:
    return str(uuid.UUID(int=i + 1))


def fill(store: object, images: np.ndarray, start: int = 0, batch: int = 250) -> None:
    for first in range(0, len(images), batch):
        store.upsert([  # type: ignore[attr-defined]
            PointRecord(point_id(start + i), images[i], None,
                        {"format": "jpeg" if (start + i) % 3 else "png", "size": start + i})
            for i in range(first, min(first + batch, len(images)))])


def location(backend: str, tmp_path: Path) -> str:
    return str(tmp_path / "edge") if backend == "edge" else f"path:{tmp_path / 'server'}"


def ids_of(hits: list) -> list[int]:
    return [uuid.UUID(h.id).int - 1 for h in hits]


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    return gap_vectors(1_200)


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_stage_returns_the_exact_top_k_when_the_candidates_hold_it(backend, tmp_path, data):
    images, candidates = data["images"], 60
    with open_store(location(backend, tmp_path), info_for(data)) as store:
        fill(store, images)
        assert store.info.image_mean is not None
        centred_images = centre(images, store.info.image_mean)
        held = 0
        for query in data["queries"]:
            exact = ids_of(store.search(query, K, plan=SearchPlan(exact=True, hnsw_ef=None)))
            assert exact == list(np.argsort(-(images @ query))[:K])
            two = store.search(query, K, modality="text",
                               plan=SearchPlan(exact=True, hnsw_ef=None, candidates=candidates))
            # the candidates: the text query's nearest centred images
            pool = np.argsort(-(centred_images @ query))
            pool = pool[:candidates]
            assert ids_of(two) == list(pool[np.argsort(-(images[pool] @ query))[:K]])
            np.testing.assert_allclose([h.score for h in two],
                                       np.sort(images[pool] @ query)[::-1][:K], atol=1e-5)
            if set(exact) <= set(pool.tolist()):
                held += 1
                assert ids_of(two) == exact
        assert held >= len(data["queries"]) // 2  # the case under test did occur


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_policy_sends_text_and_image_queries_two_stage_and_filtered_ones_exact(
        backend, tmp_path, data, monkeypatch):
    monkeypatch.setattr(schema_module, "EXACT_SEARCH_BELOW", 100)  # as if it were large
    monkeypatch.setattr(schema_module, "EXACT_RETRY_BELOW", 200)
    monkeypatch.setattr(schema_module, "IMAGE_BEAM_MIN", 60)  # a beam short of all 400
    images = data["images"]
    plan = search_plan(len(images), K, modality="text", across_gap=True)
    assert plan.candidates >= K and search_plan(len(images), K).candidates == 0
    image_plan = search_plan(len(images), K, modality="image", across_gap=True)
    assert 0 < image_plan.candidates < image_plan.hnsw_ef < len(images)
    with open_store(location(backend, tmp_path), info_for(data)) as store:
        fill(store, images)
        assert crosses_gap(store.info)
        for query in data["queries"]:
            two = store.search(query, K, modality="text")
            assert ids_of(two) == ids_of(store.search(query, K, modality="text", plan=plan))
        png = SearchFilter(formats=("png",))
        pngs = np.array([i for i in range(len(images)) if i % 3 == 0])
        for index, query in ((7, data["queries"][1]), (150, data["queries"][4])):
            near = images[index] + 0.05 * query  # an image query: two stages, then exact
            near = near / np.linalg.norm(near)
            got = store.search(near, K)
            assert ids_of(got) == ids_of(store.search(near, K, plan=image_plan))
            assert ids_of(got) == list(np.argsort(-(images @ near))[:K])  # held here
            for modality in ("image", "text"):  # filtered: the exact scan, whatever the beam
                want = list(pngs[np.argsort(-(images[pngs] @ near))[:K]])
                assert ids_of(store.search(near, K, png, modality=modality)) == want


def test_text_queries_take_the_plain_path_where_images_fill_the_sphere(tmp_path, monkeypatch):
    monkeypatch.setattr(schema_module, "EXACT_SEARCH_BELOW", 100)
    spread = gap_vectors(400, seed=3, cone=0.0)
    with open_store(tmp_path / "edge", info_for(spread)) as store:
        fill(store, spread["images"])
        assert store.info.image_mean is not None
        assert np.linalg.norm(store.info.image_mean) < schema_module.CONE_MIN_NORM
        query = spread["queries"][0]
        assert not crosses_gap(store.info)
        plain = store.search(query, K, modality="text")  # HNSW on `image`, no prefetch
        assert ids_of(plain) == list(np.argsort(-(spread["images"] @ query))[:K])


def test_payload_indexes_are_made_without_graph_links_since_no_filtered_query_walks_one(
        tmp_path):
    """Qdrant builds extra graph links per indexed value when the indexes exist before the
    graph (as ingest makes them); the policy scans under a filter, so they only cost build
    time. Edge is read back; the server's request is recorded on qdrant-client's local mode,
    which keeps no index parameters (no Qdrant server can be installed here)."""
    from qdrant_client import QdrantClient

    from twinrank.store.filters import INDEXED_FIELDS
    from twinrank.store.remote import _create_collection

    assert search_plan(1_000_000, K, "text", True, filtered=True).exact  # why: never a walk
    with open_store(tmp_path / "edge", info_for(None)) as store:
        with store._lease.hold() as shard:  # type: ignore[attr-defined]
            schema = shard.info().payload_schema
    assert set(schema) == set(INDEXED_FIELDS)
    assert all(index.params.enable_hnsw is False for index in schema.values())

    client, sent = QdrantClient(":memory:"), {}
    create = client.create_payload_index

    def record(collection, name, schema, **kwargs):  # type: ignore[no-untyped-def]
        sent[name] = schema
        return create(collection, name, schema, **kwargs)

    client.create_payload_index = record  # type: ignore[method-assign]
    _create_collection(client, "c", info_for(None))
    assert set(sent) == set(INDEXED_FIELDS)
    assert all(params.enable_hnsw is False for params in sent.values())


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_means_are_stored_with_the_collection_and_reloaded(backend, tmp_path, data):
    where = location(backend, tmp_path)
    info = info_for(data)
    with open_store(where, info) as store:
        fill(store, data["images"][:50])
        assert store.info.image_mean_points == 50
        np.testing.assert_allclose(store.info.image_mean, data["images"][:50].mean(0), atol=1e-6)
        written = store.info
    with open_store(where) as store:  # no identity given: everything comes from the store
        assert store.info == written
        assert store.info.text_mean == info.text_mean and store.info.centred


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_collection_that_grows_far_recomputes_its_image_mean_and_recentres(backend, tmp_path):
    first, later = gap_vectors(40, seed=1), gap_vectors(400, seed=1, shift=0.8)
    with open_store(location(backend, tmp_path), info_for(first)) as store:
        fill(store, first["images"])
        old_mean = np.asarray(store.info.image_mean)
        fill(store, later["images"], start=40, batch=400)  # 440 points: 4x past 40
        everything = np.concatenate([first["images"], later["images"]])
        assert store.info.image_mean_points == 440
        np.testing.assert_allclose(store.info.image_mean, everything.mean(0), atol=1e-5)
        assert np.linalg.norm(old_mean - everything.mean(0)) > 0.05  # it did move
        some = [0, 5, 39, 40, 300]
        stored = store._named_vectors([point_id(i) for i in some], CENTRED_VECTOR)
        wanted = centre(everything[some], store.info.image_mean)
        got = np.stack([stored[point_id(i)] for i in some])
        np.testing.assert_allclose(got / np.linalg.norm(got, axis=1, keepdims=True), wanted,
                                   atol=2e-3)  # centred vectors are stored as float16
        images = store.get_vectors([point_id(0)])[point_id(0)]
        np.testing.assert_allclose(images, first["images"][0], atol=1e-6)  # `image` untouched
        assert not store.refresh_image_mean(force=True)  # the same data: nothing moves


def test_edge_and_the_server_back_end_give_the_same_answers(tmp_path, data, monkeypatch):
    monkeypatch.setattr(schema_module, "EXACT_SEARCH_BELOW", 100)
    monkeypatch.setattr(schema_module, "EXACT_RETRY_BELOW", 200)
    info = info_for(data)
    with open_store(tmp_path / "edge", info) as edge, open_store(":memory:", info) as server:
        for store in (edge, server):
            fill(store, data["images"])
        assert edge.info == server.info
        jpeg = SearchFilter(formats=("jpeg",))
        for query in data["queries"]:
            for search_filter in (None, jpeg):
                for modality in ("text", "image"):
                    a = edge.search(query, K, search_filter, modality=modality)
                    b = server.search(query, K, search_filter, modality=modality)
                    assert ids_of(a) == ids_of(b)
                    np.testing.assert_allclose([h.score for h in a], [h.score for h in b],
                                               atol=1e-5)
                    if search_filter is not None:
                        assert all(h.payload["format"] == "jpeg" for h in a)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_collection_made_without_a_text_mean_has_no_centred_vector(backend, tmp_path, data):
    with open_store(location(backend, tmp_path), info_for(None)) as store:
        fill(store, data["images"][:100])
        assert not store.info.centred and store.info.image_mean is None
        try:
            found = store._named_vectors([point_id(0)], CENTRED_VECTOR)
        except Exception as error:  # Edge: "Not existing vector name error: centred"
            assert CENTRED_VECTOR in str(error)
            found = {}
        assert found == {}
        hits = store.search(data["queries"][0], K, modality="text")
        assert ids_of(hits) == list(np.argsort(-(data["images"][:100] @ data["queries"][0]))[:K])


def test_a_models_mean_text_vector_is_the_mean_of_its_generic_caption_vectors(tiny_model):
    from twinrank.models.gap import GENERIC_CAPTIONS, mean_text_vector

    mean = mean_text_vector(tiny_model)
    assert mean.shape == (tiny_model.config.embed_dim,) and mean.dtype == np.float32
    vectors = tiny_model.encode_text(tiny_model.tokenize(list(GENERIC_CAPTIONS))).text_vector
    np.testing.assert_allclose(mean, vectors.detach().float().numpy().mean(0), atol=1e-5)
    assert 0 < np.linalg.norm(mean) < 1  # a mean of unit vectors that do not all agree


def test_text_search_is_measured_with_the_generic_captions_and_hundreds_more():
    """The mean comes from GENERIC_CAPTIONS (never changed for a model); the calibration
    needs more queries than those 66 to tell recall 0.99 from 0.995."""
    from twinrank.models.gap import CALIBRATION_CAPTIONS, GENERIC_CAPTIONS

    assert CALIBRATION_CAPTIONS[:len(GENERIC_CAPTIONS)] == GENERIC_CAPTIONS
    assert len(set(CALIBRATION_CAPTIONS)) == len(CALIBRATION_CAPTIONS) >= 500


def test_a_collection_an_ingest_creates_records_the_models_mean_text_vector(tiny_model):
    from twinrank.ingest.collection import collection_info
    from twinrank.models.gap import mean_text_vector

    info = collection_info(tiny_model, "twinrank-tiny")
    assert info.centred and info.image_mean is None  # the store computes that one
    np.testing.assert_allclose(info.text_mean, mean_text_vector(tiny_model), atol=1e-6)


def test_only_queries_on_a_collection_whose_texts_cross_a_gap_go_two_stage():
    def info(text_mean: tuple[float, ...] | None, image_mean: tuple[float, ...] | None):
        return CollectionInfo("m", 2, 1, 1, text_mean=text_mean, image_mean=image_mean)

    assert crosses_gap(info((0.0, 0.9), (0.6, 0.0)))  # CLIP-like: two cones apart
    assert not crosses_gap(info((0.0, 0.9), (0.05, 0.0)))  # images fill the sphere
    assert not crosses_gap(info((0.6, 0.1), (0.6, 0.0)))  # texts inside the image cone
    assert not crosses_gap(info(None, (0.6, 0.0)))  # made before `centred` existed
    assert not crosses_gap(info((0.0, 0.9), None))  # nothing written yet
    two = search_plan(1_000_000, K, modality="text", across_gap=True)
    assert two.candidates >= 20 * K and not two.exact
    assert search_plan(1_000_000, K, modality="image", across_gap=True).candidates > 0
    assert search_plan(1_000_000, K, modality="image").candidates == 0  # no gap: plain HNSW
    assert search_plan(1_000, K, modality="text", across_gap=True).exact
    assert search_plan(100_000, K, modality="text", across_gap=True).exact  # recall first


@pytest.mark.parametrize("backend", BACKENDS)
def test_text_search_is_measured_kept_and_reloaded(backend, tmp_path, data, monkeypatch):
    monkeypatch.setattr(schema_module, "EXACT_SEARCH_BELOW", 100)  # as if it were large
    where = location(backend, tmp_path)
    with open_store(where, info_for(data)) as store:
        fill(store, data["images"])
        assert schema_module.calibration_due(store.info, store.count())
        measured = store.calibrate_text_search(data["generic"][:40])
        assert measured is not None
        assert (measured.points, measured.queries) == (len(data["images"]), 40)
        assert (store.info.text_ef, store.info.text_plan_points) == (
            measured.candidates, len(data["images"]))
        assert not schema_module.calibration_due(store.info, store.count())
        # counts were tried in order until one reached the target (or none did)
        tried = list(measured.tried)
        assert tried == list(schema_module.CALIBRATION_EFS[:len(tried)])
        reached = [c for c, (recall, _) in measured.tried.items()
                   if recall >= schema_module.TEXT_RECALL_TARGET]
        assert reached in ([], [tried[-1]])
        if measured.candidates:
            assert reached == [measured.candidates]
        # the policy now follows the measurement, and its answers are that plan's
        plan = search_plan(store.count(), K, "text", True, store.info)
        assert plan.exact == (not measured.candidates)
        if measured.candidates:  # the beam measured; its best 10 per result rescored
            assert (plan.hnsw_ef, plan.candidates) == (
                measured.candidates, min(measured.candidates, 10 * K))
        for query in data["queries"]:
            assert ids_of(store.search(query, K, modality="text")) == ids_of(
                store.search(query, K, modality="text", plan=plan))
        written = store.info
    with open_store(where) as store:  # kept with the collection
        assert store.info == written


def test_the_exact_scan_is_kept_when_two_stages_miss_the_recall_target(tmp_path, data,
                                                                        monkeypatch):
    monkeypatch.setattr(schema_module, "EXACT_SEARCH_BELOW", 100)
    monkeypatch.setattr(schema_module, "CALIBRATION_EFS", (K, 2 * K))
    monkeypatch.setattr(schema_module, "TEXT_RECALL_TARGET", 1.01)  # out of reach
    with open_store(tmp_path / "edge", info_for(data)) as store:
        fill(store, data["images"])
        measured = store.calibrate_text_search(data["generic"][:20])
        assert measured is not None and measured.candidates == 0
        assert list(measured.tried) == [K, 2 * K]  # both tried, neither enough
        assert store.info.text_ef == 0
        assert search_plan(store.count(), K, "text", True, store.info).exact
        assert "the exact scan" in measured.summary() and "reached recall" in measured.summary()
        query = data["queries"][0]
        assert ids_of(store.search(query, K, modality="text")) == list(
            np.argsort(-(data["images"] @ query))[:K])


def test_nothing_is_measured_where_exact_search_is_the_rule(tmp_path, data):
    with open_store(tmp_path / "edge", info_for(data)) as store:
        fill(store, data["images"][:300])  # under EXACT_SEARCH_BELOW
        assert store.calibrate_text_search(data["generic"]) is None
        assert store.info.text_ef is None


def test_a_measurement_is_scaled_to_k_and_lapses_when_the_collection_doubles():
    from dataclasses import replace

    info = CollectionInfo("m", 2, 1, 1, text_ef=300, text_plan_points=50_000)

    def beam(limit: int, **kwargs) -> tuple[int | None, int]:
        plan = search_plan(100_000, limit, "text", True, info, **kwargs)
        return plan.hnsw_ef, plan.candidates

    assert beam(20) == (300, 200)  # the measured beam; its best 10 per result rescored
    assert beam(50) == (750, 500)  # the beam grows with k
    assert beam(5) == (300, 50)
    assert search_plan(100_000, 20, "text", True, info, filtered=True).exact
    assert search_plan(5_000_000, 20, "text", True, None, filtered=True).exact
    assert search_plan(100_001, 20, "text", True, info).exact  # lapsed: the size rule
    assert search_plan(100_000, 20, "image", True, info, filtered=True).exact
    assert search_plan(100_000, 20, "image", True, info).hnsw_ef == 400  # not measured
    assert search_plan(100_000, 20, "text", True, replace(info, text_ef=0)).exact
    assert schema_module.calibration_due(
        replace(info, text_mean=(0.0, 0.9), image_mean=(0.6, 0.0)), 100_001)


def test_ingest_measures_text_search_once_the_collection_is_large(tmp_path, data, monkeypatch):
    """Ingest's hook, with the model's caption encodings replaced by the synthetic texts
    (no model that crosses a gap can be trained for a test here)."""
    from twinrank.ingest.report import IngestReport
    from twinrank.ingest.runner import measure_text_search
    from twinrank.models import gap

    monkeypatch.setattr(schema_module, "EXACT_SEARCH_BELOW", 100)
    asked: list[tuple[str, ...]] = []

    def caption_vectors(model: object, captions: tuple[str, ...]) -> np.ndarray:
        asked.append(captions)
        return data["generic"][:30]

    monkeypatch.setattr(gap, "caption_vectors", caption_vectors)
    report = IngestReport()
    with open_store(tmp_path / "edge", info_for(data)) as store:
        fill(store, data["images"][:80])
        measure_text_search(lambda: object(), store, report)  # 80 points: too few, nothing to do
        assert store.info.text_ef is None and not report.notes
        fill(store, data["images"][80:], start=80)
        measure_text_search(lambda: object(), store, report)
        assert store.info.text_ef is not None
        assert asked == [gap.CALIBRATION_CAPTIONS]
        assert report.notes and report.notes[0].startswith(
            f"text search over {len(data['images']):,} images, measured with 30 captions")
        measure_text_search(lambda: object(), store, report)  # measured already: not again
        assert len(report.notes) == 1


def test_ingest_has_an_embedded_store_build_its_graphs_past_exact_search(tmp_path, monkeypatch,
                                                                        capsys):
    """Qdrant Edge builds HNSW graphs only when asked: without ``build_index`` a store of
    any size answered every query by a scan (indexed vectors: 0)."""
    from bench import ann_corpus as corpus
    from twinrank.ingest.report import IngestReport
    from twinrank.ingest.runner import build_index

    geo = corpus.geometry(12_000, 512, 0)  # 24 MB of vectors: past Qdrant's indexing threshold
    info = CollectionInfo("gap-model", 512, 2, 4,
                          text_mean=tuple(corpus.generic_captions(geo).mean(0).tolist()))

    def indexed(store: object) -> int:
        with store._lease.hold() as shard:  # type: ignore[attr-defined]
            return int(shard.info().indexed_vectors_count)

    report = IngestReport()
    with open_store(tmp_path / "edge", info) as store:
        for start, vectors in corpus.image_chunks(geo, 12_000, 0):
            fill(store, vectors, start=start, batch=1000)
        build_index(store, report)  # 12k < EXACT_SEARCH_BELOW: exact search, no graph
        assert indexed(store) == 0 and "index" not in report.stage_seconds
        monkeypatch.setattr(schema_module, "EXACT_SEARCH_BELOW", 10_000)
        build_index(store, report, progress=True)
        assert indexed(store) >= 12_000 and report.stage_seconds["index"] > 0
        assert "Building the search index for 12,000 images" in capsys.readouterr().out

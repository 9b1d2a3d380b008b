"""Ingest -> embedded Qdrant Edge -> search -> rerank, with the tiny model."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from twinrank.ingest import IngestConfig, run_ingest
from twinrank.ingest.collection import collection_info
from twinrank.models import create_model
from twinrank.models.encode import ImageEmbedder
from twinrank.rerank import FusedReranker
from twinrank.search import SearchClient
from twinrank.search.client import QueryError
from twinrank.search.hits import Hit
from twinrank.search.ranking import apply_scores
from twinrank.store import CollectionMismatchError, open_store


def ingest(model, root: Path, store_path: Path, **options):
    store = open_store(store_path, collection_info(model, "twinrank-tiny"))
    config = IngestConfig(root=root, batch_size=4, progress=False, **options)
    report = run_ingest(config, ImageEmbedder(model), store)
    return store, report


def test_ingest_counts_and_reports_corrupt_files(tiny_model, image_folder, tmp_path):
    store, report = ingest(tiny_model, image_folder, tmp_path / "store")
    assert (report.added, len(report.failed)) == (10, 1)
    assert report.failed[0]["path"].endswith("broken.jpg")
    assert "damaged or truncated" in report.failed[0]["reason"]
    assert store.count() == 10
    store.close()


def test_each_image_finds_its_own_point(tiny_model, image_folder, tmp_path):
    store, _ = ingest(tiny_model, image_folder, tmp_path / "store")
    for point_id, payload in list(store.iter_payloads()):
        vector = store.get_vectors([point_id])[point_id]
        top = store.search(vector, limit=1)[0]
        assert top.id == point_id and top.payload["paths"] == payload["paths"]
    store.close()


def test_rerun_embeds_nothing_and_duplicates_are_stored_once(tiny_model, image_folder, tmp_path):
    shutil.copy(image_folder / "2021" / "a0.png", image_folder / "2022" / "copy.png")
    store, first = ingest(tiny_model, image_folder, tmp_path / "store")
    assert store.count() == 10 and first.added == 10
    paths = [p for _, p in store.iter_payloads() if len(p["paths"]) == 2]
    assert len(paths) == 1 and paths[0]["paths"][1].endswith("copy.png") or \
        paths[0]["paths"][0].endswith("copy.png")
    store.close()
    store, second = ingest(tiny_model, image_folder, tmp_path / "store")
    assert (second.added, second.updated, second.unchanged) == (0, 0, 11)
    store.close()


def test_search_returns_typed_hits_with_both_stages(tiny_model, image_folder, tmp_path):
    store, _ = ingest(tiny_model, image_folder, tmp_path / "store")
    with SearchClient(store, model=tiny_model, rerank_top_k=8) as client:
        hits = client.search("a red block next to a green one", k=5)
        plain = client.search("a red block next to a green one", k=5, rerank=False)
    assert len(hits) == 5 and set(hits.timings) == {"encode_ms", "search_ms", "rerank_ms"}
    assert [h.rerank_rank for h in hits] == [1, 2, 3, 4, 5]
    assert all(Path(h.path).is_file() for h in hits)
    assert [h.bi_rank for h in plain] == [1, 2, 3, 4, 5]
    assert all(h.rerank_rank is None for h in plain)
    assert plain[0].bi_score >= plain[-1].bi_score


def test_reranked_order_is_the_heads_order(tiny_model, image_folder, tmp_path):
    store, _ = ingest(tiny_model, image_folder, tmp_path / "store")
    client = SearchClient(store, model=tiny_model, rerank_top_k=10)
    query = "a blue square"
    candidates = client.search(query, k=10, rerank=False)
    reranker = FusedReranker(tiny_model, store)
    scores = reranker.score(query, candidates)
    reranked = client.search(query, k=10)
    expected = [candidates[i].id for i in np.argsort(-scores, kind="stable")]
    assert [h.id for h in reranked] == expected
    assert np.allclose([h.rerank_score for h in reranked], np.sort(scores)[::-1], atol=1e-5)
    client.close()


def test_cached_and_recomputed_tokens_score_the_same(tiny_model, image_folder, tmp_path):
    store, _ = ingest(tiny_model, image_folder, tmp_path / "store")
    client = SearchClient(store, model=tiny_model)
    hits = client.search("shapes", k=6, rerank=False)
    cached = FusedReranker(tiny_model, store).score("shapes", hits)
    recomputed = FusedReranker(tiny_model, None).score("shapes", hits)  # no store: from files
    assert np.allclose(cached, recomputed, atol=1e-3)
    client.close()


def test_apply_scores_blends_and_keeps_both_ranks():
    hits = [Hit(id=c, path=c, score=s, bi_score=s, bi_rank=i + 1)
            for i, (c, s) in enumerate([("a", 0.9), ("b", 0.5), ("c", 0.1)])]
    reranked = apply_scores(hits, np.array([0.0, 1.0, 0.5]))
    assert [h.id for h in reranked] == ["b", "c", "a"]
    assert [h.moved for h in reranked] == [1, 1, -2]
    blended = apply_scores(hits, np.array([0.0, 1.0, 0.5]), bi_weight=10.0)
    assert [h.id for h in blended] == ["a", "b", "c"]


def test_wrong_model_for_a_collection_is_a_clear_error(tiny_model, image_folder, tmp_path):
    store, _ = ingest(tiny_model, image_folder, tmp_path / "store")
    store.close()
    other = create_model("twinrank-tiny", seed=7)
    with pytest.raises(CollectionMismatchError, match="twinrank-tiny:random:0.*twinrank-tiny"):
        SearchClient(tmp_path / "store", model=other)


def test_client_loads_the_collections_own_model(tiny_model, image_folder, tmp_path):
    store, _ = ingest(tiny_model, image_folder, tmp_path / "store")
    store.close()
    with SearchClient(tmp_path / "store") as client:
        assert client.stats()["images"] == 10
        assert client.model.model_id == tiny_model.model_id
        with pytest.raises(QueryError, match="empty"):
            client.search("   ")


def test_text_encoding_matches_between_client_and_model(tiny_model, image_folder, tmp_path):
    store, _ = ingest(tiny_model, image_folder, tmp_path / "store")
    client = SearchClient(store, model=tiny_model)
    with torch.no_grad():
        direct = tiny_model.encode_text(tiny_model.tokenize(["a cat"])).text_vector[0].numpy()
    assert np.allclose(client.encode_query("  a   cat "), direct, atol=1e-6)
    client.close()

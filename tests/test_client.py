"""SearchClient over both back ends: text and image queries, batches, similar, stats, CLI."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from twinrank.cli import app
from twinrank.ingest import IngestConfig, run_ingest
from twinrank.ingest.collection import collection_info
from twinrank.models import TwinModel
from twinrank.models.encode import ImageEmbedder
from twinrank.search import SearchClient, SearchFilter
from twinrank.search.client import QueryError
from twinrank.store import CollectionMismatchError, open_store


def ingest_into(model, root: Path, location: str | Path, **options):
    store = open_store(location, collection_info(model, "twinrank-tiny"), **options)
    run_ingest(IngestConfig(root=root, batch_size=4, progress=False), ImageEmbedder(model), store)
    return store


@pytest.fixture
def client(tiny_model, image_folder, tmp_path):
    store = ingest_into(tiny_model, image_folder, tmp_path / "store")
    with SearchClient(store, model=tiny_model, rerank_top_k=8) as opened:
        yield opened


def test_both_back_ends_answer_the_same_through_the_client(tiny_model, image_folder, tmp_path):
    edge = ingest_into(tiny_model, image_folder, tmp_path / "store")
    local = ingest_into(tiny_model, image_folder, "", url=f"path:{tmp_path / 'local'}")
    filters = [None, SearchFilter(folder=str(image_folder / "2022"), formats=("jpeg",))]
    with SearchClient(edge, model=tiny_model) as a, SearchClient(local, model=tiny_model) as b:
        for query in ["a red block", Path(image_folder / "2021/a1.png")]:
            for search_filter in filters:
                for rerank in (False, True):
                    ha = a.search(query, k=5, rerank=rerank, filters=search_filter)
                    hb = b.search(query, k=5, rerank=rerank, filters=search_filter)
                    assert [(h.id, h.bi_rank, h.rerank_rank) for h in ha] == \
                        [(h.id, h.bi_rank, h.rerank_rank) for h in hb]
                    assert np.allclose([h.score for h in ha], [h.score for h in hb], atol=1e-4)
        assert a.stats()["images"] == b.stats()["images"] == 10


def test_image_queries_find_the_image_and_are_not_reranked(client, image_folder):
    path = image_folder / "2022" / "beach" / "b7.jpg"
    by_path = client.search(path, k=3)
    by_pixels = client.search(Image.open(path), k=3)
    assert by_path[0].path == str(path) and by_path[0].bi_score == pytest.approx(1.0, abs=1e-3)
    assert [h.id for h in by_path] == [h.id for h in by_pixels]
    assert all(h.rerank_rank is None for h in by_path) and "rerank_ms" not in by_path.timings


def test_search_batch_matches_one_by_one(client, image_folder):
    queries = ["a red block", Path(image_folder / "2021" / "a3.png"), "two blue squares"]
    batch = client.search_batch(queries, k=4)
    for query, results in zip(queries, batch, strict=True):
        single = client.search(query, k=4)
        assert [h.id for h in results] == [h.id for h in single]
        assert np.allclose([h.score for h in results], [h.score for h in single], atol=1e-4)


def test_a_reranked_text_search_runs_the_text_tower_once(client):
    """The search and the fused reranker share the query's encoding (a spy counts the
    text tower's calls; the model itself runs unchanged)."""
    model, calls = client.model, []
    original = model.encode_text

    def counting(ids):
        calls.append(ids.shape)
        return original(ids)

    model.encode_text = counting
    try:
        queries = ["a red block", "two green and blue shapes on the left"]
        batch = client.search_batch(queries, k=5)
        assert len(calls) == 1  # one batched forward for both queries, none in the reranker
        for query, results in zip(queries, batch, strict=True):
            hits = client.search(query, k=8, rerank=False)
            expected = client.reranker.score(query, hits)  # the reranker's own encoding
            by_id = {h.id: h.rerank_score for h in results}
            for hit, score in zip(hits, expected, strict=True):
                if hit.id in by_id:
                    assert by_id[hit.id] == pytest.approx(float(score), abs=1e-4)
    finally:
        del model.encode_text


def test_similar_leaves_the_image_itself_out(client, image_folder):
    top = client.search(Path(image_folder / "2021" / "a2.png"), k=1)[0]
    by_id = client.similar(top.id, k=4)
    by_path = client.similar(image_folder / "2021" / "a2.png", k=4)
    assert len(by_id) == 4 and top.id not in {h.id for h in by_id}
    assert [h.id for h in by_id] == [h.id for h in by_path]
    assert [h.bi_rank for h in by_id] == [1, 2, 3, 4]
    in_2022 = client.similar(top.id, k=9, filters=SearchFilter(folder=str(image_folder / "2022")))
    assert len(in_2022) == 4 and all("/2022/" in h.path for h in in_2022)


def test_similar_to_a_file_outside_the_collection(client, tmp_path):
    from tests.conftest import make_image

    outside = make_image(tmp_path / "new.png", seed=123)
    assert len(client.similar(outside, k=3)) == 3
    with pytest.raises(QueryError, match="No such image file"):
        client.similar(tmp_path / "missing.png")
    with pytest.raises(QueryError, match="No image with id"):
        client.similar("00000000-0000-0000-0000-000000000000")


def test_stats_report_the_collection_and_token_bytes(client):
    stats = client.stats()
    info = client.store.info
    assert stats["images"] == 10 and stats["backend"] == "EdgeStore"
    assert stats["token_bytes_per_image"] == info.token_count * info.token_width * 2
    assert stats["token_dtype"] == "float16"


def test_many_threads_get_the_answers_one_thread_gets(client):
    queries = [f"a {c} block" for c in ("red", "green", "blue", "black")] * 2
    expected = [[h.id for h in client.search(q, k=5)] for q in queries]
    with ThreadPoolExecutor(max_workers=6) as pool:
        got = list(pool.map(lambda q: [h.id for h in client.search(q, k=5)], queries))
    assert got == expected


def test_wrong_model_is_refused_naming_both(tiny_model, image_folder, tmp_path):
    local = ingest_into(tiny_model, image_folder, "", url=f"path:{tmp_path / 'local'}")
    local.close()
    other = TwinModel(tiny_model.config, tiny_model.clip, model_id="someone-elses-model")
    with pytest.raises(CollectionMismatchError, match="twinrank-tiny.*someone-elses-model"):
        SearchClient(f"path:{tmp_path / 'local'}", model=other)


def test_cli_search_filters_and_json(tiny_model, image_folder, tmp_path):
    ingest_into(tiny_model, image_folder, tmp_path / "store").close()
    runner = CliRunner()
    base = ["search", "blocks", "--store", str(tmp_path / "store"), "--no-rerank", "--json"]
    beach = runner.invoke(app, [*base, "--folder", str(image_folder / "2022" / "beach")])
    assert beach.exit_code == 0, beach.output
    assert {Path(r["path"]).parent.name for r in json.loads(beach.stdout)} == {"beach"}
    assert len(json.loads(beach.stdout)) == 4
    pngs = runner.invoke(app, [*base, "--type", "png", "--min-size", "10", "--after",
                               "2000-01-01", "--before", "2100-01-01"])
    assert [Path(r["path"]).suffix for r in json.loads(pngs.stdout)] == [".png"] * 6
    none = runner.invoke(app, [*base[:-1], "--max-size", "1"])
    assert none.exit_code == 0 and "No images match" in none.output
    bad = runner.invoke(app, [*base, "--after", "last tuesday"])
    assert bad.exit_code == 1 and "Cannot read the date" in bad.output


def test_cli_unreachable_server_is_one_clear_line(tmp_path):
    result = CliRunner().invoke(app, ["search", "x", "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 1
    assert "Could not reach the Qdrant server" in result.output
    assert "Traceback" not in result.output


def test_orientation_filter_is_written_at_ingest_and_searched_on_both_back_ends(
        tiny_model, tmp_path):
    """A filter added in three places (payload key + filter in store/filters.py, the value
    in ingest/write.py, the option in cli.py) works on Edge and the server back end."""
    from tests.conftest import make_image

    root = tmp_path / "photos"
    make_image(root / "wide.png", seed=1, size=(64, 32))
    make_image(root / "tall.png", seed=2, size=(32, 64))
    make_image(root / "even.png", seed=3, size=(40, 40))
    for location in (tmp_path / "edge", f"path:{tmp_path / 'local'}"):
        store = ingest_into(tiny_model, root, location)
        store.close()
        with SearchClient(location, model=tiny_model, reranker=None) as client:
            for wanted, name in (("landscape", "wide"), ("portrait", "tall"), ("square", "even")):
                hits = client.search("blocks", k=3, filters=SearchFilter(orientation=wanted))
                assert [Path(h.path).stem for h in hits] == [name]
                assert hits[0].payload["orientation"] == wanted
    result = CliRunner().invoke(app, ["search", "blocks", "--store", str(tmp_path / "edge"),
                                      "--no-rerank", "--orientation", "portrait"])
    assert result.exit_code == 0 and "tall.png" in result.output and "wide" not in result.output
    bad = CliRunner().invoke(app, ["search", "blocks", "--store", str(tmp_path / "edge"),
                                   "--orientation", "diagonal"])
    assert bad.exit_code == 1 and "Unknown orientation" in bad.output

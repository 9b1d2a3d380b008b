"""The Streamlit app's logic through AppTest (no browser)."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from ingest import IngestConfig, run_ingest
from ingest.embed import ImageEmbedder
from search import collection_info, open_store
from search.hits import Hit
from ui.launch import STORE_ENV, is_loopback
from ui.views import movement

APP = str(Path(__file__).parents[1] / "ui" / "app.py")


@pytest.fixture
def store_path(tiny_model, image_folder, tmp_path) -> Path:
    path = tmp_path / "store"
    store = open_store(path, collection_info(tiny_model, "twinrank-tiny"))
    run_ingest(IngestConfig(root=image_folder, progress=False), ImageEmbedder(tiny_model), store)
    store.close()
    return path


def test_both_columns_render_for_a_query(store_path, monkeypatch):
    monkeypatch.setenv(STORE_ENV, str(store_path))
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    at.text_input(key="query").input("a red block").run()
    assert not at.exception
    headers = [h.value for h in at.subheader]
    assert "Before: bi-encoder" in headers and "After: reranked" in headers
    captions = [c.value for c in at.caption]
    assert any("text encoding" in c and "rerank" in c for c in captions)
    assert len(at.get("image")) == 2 * 8  # k=8 rows, one image per column


def test_no_collection_shows_how_to_ingest(tmp_path, monkeypatch):
    monkeypatch.setenv(STORE_ENV, str(tmp_path / "nothing"))
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    assert "twinrank ingest" in at.info[0].value


def test_movement_markers():
    def hit(bi: int, after: int) -> Hit:
        return Hit(id="x", path="x", score=0, bi_score=0, bi_rank=bi, rerank_rank=after,
                   rerank_score=0.0)

    assert [movement(hit(5, 2), 8), movement(hit(1, 3), 8), movement(hit(2, 2), 8),
            movement(hit(12, 1), 8)] == ["↑3", "↓2", "=", "new"]


def test_loopback_detection():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0")

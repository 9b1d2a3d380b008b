"""The Streamlit app's logic through AppTest (no browser)."""

from __future__ import annotations

import io
import json
import os
import re
from datetime import date, datetime, timezone
from pathlib import Path

import pytest
from conftest import make_image
from streamlit.testing.v1 import AppTest

from twinrank.ingest import IngestConfig, run_ingest
from twinrank.ingest.collection import collection_info
from twinrank.models import create_model
from twinrank.models.encode import ImageEmbedder
from twinrank.search import SearchClient
from twinrank.search.hits import Hit
from twinrank.store import open_store
from twinrank.ui.launch import STORE_ENV, app_url, is_loopback
from twinrank.ui.render import PER_ROW
from twinrank.ui.results_grid import MODE_KEY, RESULTS_KEY, SHOWN_KEY, SIMILAR_KEY, clicked
from twinrank.ui.views import caption, movement, path_name, timing_line

APP = str(Path(__file__).parents[1] / "ui" / "app.py")
QUERY = "a red block"
K = 8


def stamp(path: Path, when: datetime) -> None:
    seconds = when.replace(tzinfo=timezone.utc).timestamp()
    os.utime(path, (seconds, seconds))


def build_store(root: Path, store_path: Path) -> Path:
    """10 images (6 png in 2021/, 4 jpg in 2022/beach/) ingested with the tiny model."""
    for i in range(6):  # file times stand in for capture times (no EXIF)
        stamp(make_image(root / "2021" / f"a{i}.png", seed=i), datetime(2021, 3, 1 + i))
    for i in range(6, 10):
        stamp(make_image(root / "2022" / "beach" / f"b{i}.jpg", seed=i), datetime(2022, 7, i))
    model = create_model("twinrank-tiny", device="cpu")
    store = open_store(store_path, collection_info(model, "twinrank-tiny"))
    run_ingest(IngestConfig(root=root, progress=False), ImageEmbedder(model), store)
    store.close()
    return store_path


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory) -> tuple[Path, list[Hit], list[Hit]]:
    """One read-only collection for this module, with the answer SearchClient gives."""
    base = tmp_path_factory.mktemp("ui")
    path = build_store(base / "photos", base / "store")
    with SearchClient(path) as client:
        before, after = client.compare(QUERY, k=K)
    return path, list(before), list(after)


def run_app(store: Path | str, monkeypatch) -> AppTest:
    monkeypatch.setenv(STORE_ENV, str(store))
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    return at


def as_read(markdown: str) -> str:
    """Markdown the app escaped (``views.markdown_safe``) as a person reads it."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown).replace("\u2060", "")


def results_grid(at: AppTest) -> dict:
    """What the app sent its result grid (one element; its drawing needs a browser, which
    tests/test_browser_ui.py drives)."""
    grids = at.get("bidi_component")
    assert len(grids) == 1 and grids[0].proto.component_name == "twinrank_results"
    return json.loads(grids[0].proto.json)


def column_titles(at: AppTest) -> list[str]:
    return [column["title"] for column in results_grid(at)["columns"]]


def image_captions(at: AppTest) -> list[str]:
    """The captions of every result card, column after column."""
    return [card["caption"] for column in results_grid(at)["columns"]
            for card in column["cards"]]


def click(at: AppTest, event: str, card_key: str) -> AppTest:
    """What a card's button does in the browser: its point id arrives as a trigger value,
    and the app acts on it only if it was one of the results shown (AppTest cannot run the
    grid's JavaScript, so the trigger is handed to the same check the callback uses)."""
    card = next(card for column in results_grid(at)["columns"] for card in column["cards"]
                if card["key"] == card_key)
    state = {RESULTS_KEY: {event: card["id"]}, SHOWN_KEY: at.session_state[SHOWN_KEY]}
    point_id = clicked(state, event)
    assert point_id == card["id"]
    if event == "similar":
        at.session_state[SIMILAR_KEY] = point_id
        at.session_state[MODE_KEY] = "similar"
    else:
        at.session_state["details_of"] = point_id
    return at.run()


def test_both_columns_hold_what_the_client_returns(shared_store, monkeypatch):
    path, before, after = shared_store
    at = run_app(path, monkeypatch)
    at.text_input(key="query").input(QUERY).run()
    assert not at.exception
    assert column_titles(at) == ["Before: bi-encoder", "After: reranked"]
    timing = next(c.value for c in at.caption if "text encoding" in c.value)
    assert "vector search" in timing and "rerank" in timing
    shown = image_captions(at)
    assert len(shown) == 2 * K
    assert shown == ([caption(h, "before", K) for h in before]
                     + [caption(h, "after", K) for h in after])
    assert results_grid(at)["per_row"] == PER_ROW  # rows of both columns line up
    cards = results_grid(at)["columns"][1]["cards"]
    assert [c["id"] for c in cards] == [h.id for h in after]
    assert all(c["src"].startswith("data:image/jpeg;base64,") for c in cards)
    assert [c["badge"] for c in cards] == [m if m != "=" else "" for m in
                                           (movement(h, K) for h in after)]
    assert any(movement(h, K) != "=" for h in after)  # the tiny reranker does move things


def test_filters_restrict_the_results(shared_store, monkeypatch):
    path, _, _ = shared_store
    at = run_app(path, monkeypatch)
    folder = at.selectbox(key="folder")
    beach = next(i for i, o in enumerate(folder.options) if o.startswith("2022/beach"))
    folder.select_index(beach).run()
    at.text_input(key="query").input(QUERY).run()
    names = [c.rsplit(" · ", 1)[-1] for c in image_captions(at)]
    assert names and all(n.startswith("b") and n.endswith(".jpg") for n in names)
    assert len(names) == 2 * 4  # only four images live there
    at.selectbox(key="folder").select_index(0).run()
    at.multiselect(key="formats").set_value(["png"]).run()
    names = [c.rsplit(" · ", 1)[-1] for c in image_captions(at)]
    assert len(names) == 2 * 6 and all(n.endswith(".png") for n in names)


def test_date_range_restricts_the_results(shared_store, monkeypatch):
    path, _, _ = shared_store
    at = run_app(path, monkeypatch)
    dates = at.date_input(key="dates")
    assert dates.value == (date(2021, 3, 1), date(2022, 7, 9))
    dates.set_value((date(2021, 3, 2), date(2021, 3, 4))).run()
    at.text_input(key="query").input(QUERY).run()
    names = sorted({c.rsplit(" · ", 1)[-1] for c in image_captions(at)})
    assert names == ["a1.png", "a2.png", "a3.png"]  # both ends of the range included


def test_rerank_off_shows_one_bi_encoder_list(shared_store, monkeypatch):
    path, before, _ = shared_store
    at = run_app(path, monkeypatch)
    at.toggle(key="rerank").set_value(False).run()
    at.text_input(key="query").input(QUERY).run()
    assert column_titles(at) == ["Bi-encoder order (rerank off)"]
    names = [c.rsplit(" · ", 1)[-1] for c in image_captions(at)]
    assert names == [h.path.rsplit("/", 1)[-1] for h in before]
    assert not any("rerank" in c.value for c in at.caption if "encoding" in c.value)


def test_more_like_this_and_details(shared_store, monkeypatch):
    path, _, after = shared_store
    at = run_app(path, monkeypatch)
    at.text_input(key="query").input(QUERY).run()
    click(at, "similar", "after-1")
    assert not at.exception
    source = after[0].path.rsplit("/", 1)[-1]
    assert column_titles(at) == [f"More like {source}"]
    assert [as_read(c) for c in at.image[0].captions] == [f"Searching with {source}"]
    names = [c.rsplit(" · ", 1)[-1] for c in image_captions(at)]
    assert len(names) == K and source not in names  # the image itself is left out
    click(at, "details", "grid-1")
    assert not at.exception
    details = [t.value for t in at.text]
    assert any(line.startswith("path: ") and line.endswith(f"/{names[0]}") for line in details)
    assert any(line.startswith("file type: ") for line in details)
    at.button(key="back").click().run()
    assert column_titles(at) == ["Before: bi-encoder", "After: reranked"]


def test_a_click_counts_only_for_a_result_the_session_was_shown():
    shown = frozenset({"0f8a", "77c1"})
    assert clicked({RESULTS_KEY: {"similar": "77c1"}, SHOWN_KEY: shown}, "similar") == "77c1"
    for sent in ("ffff", "../../etc/passwd", 7, None, ["77c1"]):
        assert clicked({RESULTS_KEY: {"similar": sent}, SHOWN_KEY: shown}, "similar") is None
    assert clicked({RESULTS_KEY: {"details": "77c1"}, SHOWN_KEY: shown}, "similar") is None
    assert clicked({}, "similar") is None


def test_search_by_uploaded_image_finds_that_image_first(shared_store, monkeypatch):
    path, _, _ = shared_store
    at = run_app(path, monkeypatch)
    data = (path.parent / "photos" / "2021" / "a3.png").read_bytes()
    at.file_uploader(key="upload").set_value(("mine.png", data, "image/png")).run()
    assert not at.exception
    assert column_titles(at) == ["Nearest to your image"]
    assert at.image[0].captions == ["Your image"]  # the upload itself, above the grid
    first = image_captions(at)[0]
    assert first.endswith("a3.png") and "cos 1.000" in first


def test_an_upload_that_is_not_an_image_is_a_message(shared_store, monkeypatch):
    path, _, _ = shared_store
    at = run_app(path, monkeypatch)
    buffer = io.BytesIO(b"\x89PNG\r\n\x1a\n not really a png")
    at.file_uploader(key="upload").set_value(("x.png", buffer.getvalue(), "image/png")).run()
    assert not at.exception
    assert "Cannot read image x.png" in as_read(at.error[0].value)


def test_unexpected_errors_never_show_a_stack_trace(shared_store, monkeypatch):
    path, _, _ = shared_store

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(SearchClient, "compare", broken)
    at = run_app(path, monkeypatch)
    at.text_input(key="query").input(QUERY).run()
    assert not at.exception
    assert "Something went wrong (RuntimeError: disk on fire)" in as_read(at.error[0].value)


def test_no_collection_shows_how_to_ingest(tmp_path, monkeypatch):
    at = run_app(tmp_path / "nothing", monkeypatch)
    assert "twinrank ingest" in at.info[0].value


def test_busy_store_is_a_clear_message(tmp_path, monkeypatch):
    path = build_store(tmp_path / "photos", tmp_path / "store")
    monkeypatch.setenv("TWINRANK_STORE_WAIT_S", "0.5")
    holder = open_store(path)  # an ingest, say, in the middle of a multi-step change
    try:
        with holder.exclusive():
            at = run_app(path, monkeypatch)
        assert "busy" in at.warning[0].value and "another process" in at.warning[0].value
    finally:
        holder.close()


def test_app_works_while_another_handle_holds_the_store(tmp_path, monkeypatch):
    path = build_store(tmp_path / "photos", tmp_path / "store")
    holder = open_store(path)  # open, but between operations: it hands the folder over
    try:
        at = run_app(path, monkeypatch)
        assert not at.exception and not at.warning
        at.text_input(key="query").input("a red block").run()
        assert not at.exception
        assert len(image_captions(at)) == 2 * K
    finally:
        holder.close()


def test_missing_model_is_a_clear_message(tmp_path, monkeypatch):
    path = build_store(tmp_path / "photos", tmp_path / "store")
    meta = path / "twinrank.json"
    info = json.loads(meta.read_text())
    info["model_source"] = str(tmp_path / "deleted-model")
    meta.write_text(json.dumps(info))
    at = run_app(path, monkeypatch)
    assert "model could not be loaded" in at.error[0].value
    assert "deleted-model" in as_read(at.error[0].value)


def test_movement_markers():
    def hit(bi: int, after: int) -> Hit:
        return Hit(id="x", path="x", score=0, bi_score=0, bi_rank=bi, rerank_rank=after,
                   rerank_score=0.0)

    assert [movement(hit(5, 2), 8), movement(hit(1, 3), 8), movement(hit(2, 2), 8),
            movement(hit(12, 1), 8)] == ["↑3", "↓2", "=", "new"]


def test_timing_line_and_names():
    line = timing_line({"encode_ms": 10.0, "search_ms": 2.0, "rerank_ms": 5.5})
    assert line == "text encoding 10.0 ms · vector search 2.0 ms · rerank 5.5 ms · total 17.5 ms"
    assert path_name("/a/b.png") == "b.png"
    assert path_name("/photos/2021\\beach/a\\b.png") == "a\\b.png"  # a name, not a separator


def test_loopback_detection():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0")
    assert app_url("0.0.0.0", 8501) == "http://127.0.0.1:8501"
    assert app_url("::1", 80) == "http://[::1]:80"

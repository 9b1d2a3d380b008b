"""Drawing results: before/after grids with aligned rows, a grid for image searches, "more
like this" and "details" under each result, and the details dialog.

Every image shown is a thumbnail made from a path in a stored point's payload. The cards
of an answer are drawn by one element (``ui/results_grid``), so a new answer is one
message to the browser, not one per image, caption and button.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import streamlit as st

from twinrank.search import SearchClient
from twinrank.search.hits import Hit
from twinrank.ui.lookup import source_payload
from twinrank.ui.results_grid import (
    GridColumn,
    make_card,
    results_grid,
    take_details_request,
)
from twinrank.ui.thumbs import PREVIEW_SIZE, ThumbnailCache
from twinrank.ui.views import (
    caption,
    file_name,
    markdown_safe,
    metadata_rows,
    moved_summary,
    timing_line,
)

PER_ROW = 4  # thumbnails a row in each of the before/after columns
GRID_COLUMNS = 8  # thumbnails a row when one list fills the page


def load_thumbs(thumbs: ThumbnailCache, hits: Sequence[Hit]) -> dict[str, Path | None]:
    """Thumbnails for ``hits``: made on first use, then read from disk."""
    return {hit.id: thumbs.get(hit.id, hit.payload) for hit in hits}


def details_if_asked(client: SearchClient, thumbs: ThumbnailCache) -> None:
    """Open the details dialog when a card's "Details" was clicked since the last run."""
    point_id = take_details_request()
    if point_id is not None:
        show_details(client, thumbs, point_id)


def source_card(thumbs: ThumbnailCache, point_id: str, payload: dict[str, Any],
                name: str) -> None:
    """The image a "more like this" search started from."""
    thumb = thumbs.get(point_id, payload)
    if thumb is not None:
        st.image(str(thumb), caption=f"Searching with {markdown_safe(name)}", width=120)


@st.dialog("Image details", width="large")
def show_details(client: SearchClient, thumbs: ThumbnailCache, point_id: str) -> None:
    """The image at a readable size with its path and metadata, read fresh from the store."""
    payload = source_payload(client, point_id)
    if not payload:
        st.warning("This image is no longer in the collection.")
        return
    preview = thumbs.get(point_id, payload, PREVIEW_SIZE)
    if preview is None:
        st.warning("The file is missing or unreadable; re-run `twinrank ingest` to refresh.")
    else:
        st.image(str(preview))
    for label, value in metadata_rows(payload):  # as text: a file name is never markup
        st.text(f"{label}: {value}")


def before_after(
    thumbs: ThumbnailCache, before: Sequence[Hit], after: Sequence[Hit], k: int,
    timings: dict[str, float],
) -> None:
    """The centrepiece: bi-encoder order on the left, reranked order on the right, each a
    grid of ``PER_ROW`` thumbnails a row, rows aligned so the same ranks sit side by side."""
    started = time.perf_counter()
    paths = load_thumbs(thumbs, [*before, *after])
    columns = [
        GridColumn(title, stage, [
            make_card(hit, f"{stage}-{rank}", caption(hit, stage, k), paths[hit.id], k,
                      reranked=stage == "after")
            for rank, hit in enumerate(hits, start=1)])
        for title, stage, hits in (("Before: bi-encoder", "before", before),
                                   ("After: reranked", "after", after))]
    thumbs_ms = (time.perf_counter() - started) * 1000.0
    st.caption(f"{timing_line(timings)} · thumbnails {thumbs_ms:.1f} ms · "
               f"{moved_summary(list(after), k)}")
    results_grid(columns, PER_ROW)


def grid(
    thumbs: ThumbnailCache, hits: Sequence[Hit], title: str, timings: dict[str, float],
    label: Callable[[Hit], str] | None = None,
) -> None:
    """A single ranked list (rerank off, or a search by image) as a grid of cards."""
    started = time.perf_counter()
    paths = load_thumbs(thumbs, hits)
    cards = [make_card(hit, f"grid-{rank}",
                       label(hit) if label else
                       f"#{hit.bi_rank} · cos {hit.bi_score:.3f} · {file_name(hit)}",
                       paths[hit.id], len(hits))
             for rank, hit in enumerate(hits, start=1)]
    thumbs_ms = (time.perf_counter() - started) * 1000.0
    st.caption(f"{timing_line(timings)} · thumbnails {thumbs_ms:.1f} ms")
    results_grid([GridColumn(title, "grid", cards)], GRID_COLUMNS)

"""Drawing results: before/after grids with aligned rows, a grid for image searches, result
cards with "more like this" and "details" under each, and the details dialog.

Every image shown is a thumbnail made from a path in a stored point's payload.
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
SIMILAR_KEY = "similar_to"
MODE_KEY = "mode"


def ask_similar(point_id: str) -> None:
    """Button callback: show images like ``point_id`` (an id from our own results)."""
    st.session_state[SIMILAR_KEY] = point_id
    st.session_state[MODE_KEY] = "similar"


def load_thumbs(thumbs: ThumbnailCache, hits: Sequence[Hit]) -> tuple[dict[str, Path | None],
                                                                         float]:
    """Thumbnails for ``hits`` (made on first use, then read from disk) and the ms it took."""
    started = time.perf_counter()
    paths = {hit.id: thumbs.get(hit.id, hit.payload) for hit in hits}
    return paths, (time.perf_counter() - started) * 1000.0


def result_card(
    client: SearchClient,
    thumbs: ThumbnailCache,
    hit: Hit,
    text: str,
    key: str,
    thumb: Path | None,
) -> None:
    """One result: thumbnail, its caption (rank, score, movement, file name) and two small
    actions under it, "Similar" (more like this) and "Details"."""
    with st.container(key=f"card-{key}", gap="small"):
        if thumb is not None:
            st.image(str(thumb), caption=markdown_safe(text), width="stretch")
        else:
            st.warning(f"{markdown_safe(text)}: the file is missing or unreadable (moved since "
                       f"ingest?).")
        with st.container(horizontal=True, gap="small"):
            st.button("Similar", key=f"similar-{key}", on_click=ask_similar,
                      args=(hit.id,), type="tertiary",
                      help="More like this: search the collection with this image.")
            if st.button("Details", key=f"details-{key}", type="tertiary",
                         help="The full image and its facts."):
                show_details(client, thumbs, hit.id)


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
    client: SearchClient, thumbs: ThumbnailCache, before: Sequence[Hit], after: Sequence[Hit],
    k: int, timings: dict[str, float],
) -> None:
    """The centrepiece: bi-encoder order on the left, reranked order on the right, each a
    grid of ``PER_ROW`` thumbnails a row, rows aligned so the same ranks sit side by side."""
    paths, thumbs_ms = load_thumbs(thumbs, [*before, *after])
    st.caption(f"{timing_line(timings)} · thumbnails {thumbs_ms:.1f} ms · "
               f"{moved_summary(list(after), k)}")
    left, right = st.columns(2, gap="large")
    left.subheader("Before: bi-encoder")
    right.subheader("After: reranked")
    for start in range(0, max(len(before), len(after)), PER_ROW):
        halves = st.columns(2, gap="large")
        for half, hits, stage in ((halves[0], before, "before"), (halves[1], after, "after")):
            cells = half.columns(PER_ROW, gap="small")
            for offset, hit in enumerate(hits[start:start + PER_ROW]):
                rank = start + offset + 1
                with cells[offset]:
                    result_card(client, thumbs, hit, caption(hit, stage, k), f"{stage}-{rank}",
                                paths[hit.id])


def grid(
    client: SearchClient, thumbs: ThumbnailCache, hits: Sequence[Hit], title: str,
    timings: dict[str, float], label: Callable[[Hit], str] | None = None,
) -> None:
    """A single ranked list (rerank off, or a search by image) as a grid of cards."""
    paths, thumbs_ms = load_thumbs(thumbs, hits)
    st.caption(f"{timing_line(timings)} · thumbnails {thumbs_ms:.1f} ms")
    st.subheader(markdown_safe(title))
    for start in range(0, len(hits), GRID_COLUMNS):
        columns = st.columns(GRID_COLUMNS, gap="small")
        for column, hit in zip(columns, hits[start:start + GRID_COLUMNS], strict=False):
            with column:
                text = label(hit) if label else f"#{hit.bi_rank} · cos {hit.bi_score:.3f} · " \
                                                f"{file_name(hit)}"
                result_card(client, thumbs, hit, text, f"grid-{hit.bi_rank}", paths[hit.id])

"""Drawing results: aligned before/after columns, a grid for image searches, result cards
with "more like this" and "details", and the details dialog.

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
from twinrank.ui.views import caption, file_name, metadata_rows, moved_summary, timing_line

CARD_WIDTH = 200  # px on the page; thumbnails are made at 256 so they stay sharp
GRID_COLUMNS = 4
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
    side_by_side: bool = False,
) -> None:
    """One result: thumbnail with its caption, "More like this" and "Details" beside it
    (``side_by_side``, for the two-column view) or below it (the grid)."""
    with st.container(key=f"card-{key}"):
        picture, actions = st.columns([3, 2], vertical_alignment="center") if side_by_side \
            else (st.container(), st.container(horizontal=True, gap="small"))
        with picture:
            if thumb is not None:
                st.image(str(thumb), caption=text, width=CARD_WIDTH)
            else:
                st.warning(f"{text}: the file is missing or unreadable (moved since ingest?).")
        with actions:
            st.button("More like this", key=f"similar-{key}", on_click=ask_similar,
                      args=(hit.id,), help="Search the collection with this image.")
            if st.button("Details", key=f"details-{key}", help="The full image and its facts."):
                show_details(client, thumbs, hit.id)


def source_card(thumbs: ThumbnailCache, point_id: str, payload: dict[str, Any],
                name: str) -> None:
    """The image a "more like this" search started from."""
    thumb = thumbs.get(point_id, payload)
    if thumb is not None:
        st.image(str(thumb), caption=f"Searching with {name}", width=120)


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
    st.markdown("\n".join(f"- **{label}**: `{value}`" for label, value in
                          metadata_rows(payload)))


def before_after(
    client: SearchClient, thumbs: ThumbnailCache, before: Sequence[Hit], after: Sequence[Hit],
    k: int, timings: dict[str, float],
) -> None:
    """The centrepiece: bi-encoder order on the left, reranked order on the right, row by
    row so the same rank sits side by side."""
    paths, thumbs_ms = load_thumbs(thumbs, [*before, *after])
    st.caption(f"{timing_line(timings)} · thumbnails {thumbs_ms:.1f} ms")
    st.caption(moved_summary(list(after), k))
    left, right = st.columns(2)
    left.subheader("Before: bi-encoder")
    right.subheader("After: reranked")
    for rank, (first, second) in enumerate(zip(before, after, strict=False), start=1):
        col_a, col_b = st.columns(2)
        with col_a:
            result_card(client, thumbs, first, caption(first, "before", k), f"before-{rank}",
                        paths[first.id], side_by_side=True)
        with col_b:
            result_card(client, thumbs, second, caption(second, "after", k), f"after-{rank}",
                        paths[second.id], side_by_side=True)


def grid(
    client: SearchClient, thumbs: ThumbnailCache, hits: Sequence[Hit], title: str,
    timings: dict[str, float], label: Callable[[Hit], str] | None = None,
) -> None:
    """A single ranked list (rerank off, or a search by image) as a grid of cards."""
    paths, thumbs_ms = load_thumbs(thumbs, hits)
    st.caption(f"{timing_line(timings)} · thumbnails {thumbs_ms:.1f} ms")
    st.subheader(title)
    for start in range(0, len(hits), GRID_COLUMNS):
        columns = st.columns(GRID_COLUMNS)
        for column, hit in zip(columns, hits[start:start + GRID_COLUMNS], strict=False):
            with column:
                text = label(hit) if label else f"#{hit.bi_rank} · cos {hit.bi_score:.3f} · " \
                                                f"{file_name(hit)}"
                result_card(client, thumbs, hit, text, f"grid-{hit.bi_rank}", paths[hit.id])

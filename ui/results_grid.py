"""An answer's results as one Streamlit element: a grid of thumbnails per column.

Drawing each result as its own Streamlit elements (an image, a caption, two buttons) cost
about 130 messages per answer, each sent, parsed and laid out on its own: the page took
~450 ms to redraw a 12 ms query. Here every result of an answer travels in one element,
a custom component (``ui/results_grid.js`` and ``.css``) that lays out the cards itself:
thumbnails inlined as data URIs (small cached JPEGs), captions set as text, and "Similar"
and "Details" under each image sent back as trigger values.

The browser only ever sends back a point id, and an id counts only if it is one of the
results this session was shown; anything else is ignored.

Example:
    >>> card = make_card(hit, "after-1", "#1 · a caption", thumb=None, k=8, reranked=True)
    >>> card.key, card.src is None  # no thumbnail: the grid says the file is missing
    ('after-1', True)
    >>> # in the app: results_grid([GridColumn("After: reranked", "after", [card])], 4)
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import streamlit as st

from twinrank.search.hits import Hit
from twinrank.ui.views import file_name, movement

RESULTS_KEY = "results"
SHOWN_KEY = "shown_ids"
SIMILAR_KEY = "similar_to"
DETAILS_KEY = "details_of"
MODE_KEY = "mode"
_HERE = Path(__file__).parent
_MOVES = {"": "", "=": "same", "new": "new"}


class SessionState(Protocol):
    """What ``clicked`` reads: ``st.session_state``, or a plain dict in a test."""

    def get(self, key: str, default: Any, /) -> Any: ...


@dataclass(frozen=True)
class Card:
    """One result as the grid draws it."""

    id: str  # the point id, sent back by "Similar" and "Details"
    key: str  # "after-3": the stage and the rank, for tests and the benchmark
    caption: str  # rank, score, movement and file name, as views.caption writes it
    name: str  # the file name (the image's alt text)
    src: str | None  # the thumbnail as a data URI, None when the file cannot be read
    badge: str = ""  # the movement mark on the thumbnail ("↑3", "↓1", "new")
    move: str = ""  # "up", "down", "new", "same" or "": colours the badge


@dataclass(frozen=True)
class GridColumn:
    title: str
    stage: str  # "before", "after" or "grid"
    cards: Sequence[Card]


def thumbnail_uri(path: Path | None) -> str | None:
    """A cached thumbnail (a small JPEG of ours) as a data URI, or None when there is none."""
    if path is None:
        return None
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")


def make_card(hit: Hit, key: str, text: str, thumb: Path | None, k: int,
              reranked: bool = False) -> Card:
    """The card for ``hit``; ``reranked`` cards carry a movement badge."""
    mark = movement(hit, k) if reranked else ""
    move = _MOVES.get(mark, "up" if mark.startswith("↑") else "down")
    return Card(id=hit.id, key=key, caption=text, name=file_name(hit),
                src=thumbnail_uri(thumb), badge="" if mark in ("", "=") else mark, move=move)


def ask_similar(point_id: str) -> None:
    """Show images like ``point_id`` (an id from this session's own results)."""
    st.session_state[SIMILAR_KEY] = point_id
    st.session_state[MODE_KEY] = "similar"


def clicked(state: SessionState, event: str) -> str | None:
    """The point id a card's ``event`` button sent (in session ``state``), if it is one
    this session was shown; None for anything else a browser might send.

    Example:
        >>> clicked({RESULTS_KEY: {"similar": "id-2"}, SHOWN_KEY: {"id-1", "id-2"}}, "similar")
        'id-2'
        >>> clicked({RESULTS_KEY: {"similar": "../../etc"}, SHOWN_KEY: {"id-1"}}, "similar")
    """
    result = state.get(RESULTS_KEY, None) or {}
    value = result.get(event) if hasattr(result, "get") else None
    shown = state.get(SHOWN_KEY, None) or ()
    return value if isinstance(value, str) and value in shown else None


def _on_similar() -> None:
    point_id = clicked(st.session_state, "similar")
    if point_id is not None:
        ask_similar(point_id)


def _on_details() -> None:
    point_id = clicked(st.session_state, "details")
    if point_id is not None:
        st.session_state[DETAILS_KEY] = point_id


def take_details_request() -> str | None:
    """The point id whose details a click asked for since the last run (once)."""
    return st.session_state.pop(DETAILS_KEY, None)


_component = st.components.v2.component(
    "twinrank_results",
    css=(_HERE / "results_grid.css").read_text(encoding="utf-8"),
    js=(_HERE / "results_grid.js").read_text(encoding="utf-8"),
)


def results_grid(columns: Sequence[GridColumn], per_row: int) -> None:
    """Draw ``columns`` side by side, ``per_row`` cards a row in each, as one element."""
    st.session_state[SHOWN_KEY] = frozenset(card.id for c in columns for card in c.cards)
    _component(
        data={"per_row": per_row,
              "columns": [{"title": c.title, "stage": c.stage,
                           "cards": [asdict(card) for card in c.cards]} for c in columns]},
        key=RESULTS_KEY,
        on_similar_change=_on_similar,
        on_details_change=_on_details,
    )

"""twinrank's Streamlit app: type a query, see the results before and after reranking.

Run it through ``twinrank ui --store PATH`` (the store location arrives in the
TWINRANK_UI_STORE environment variable). The page only ever shows files that belong to
the collection: every image path comes from a stored point's payload.
"""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from models import ModelLoadError
from search import SearchClient, StoreBusyError, StoreError
from ui.launch import STORE_ENV
from ui.views import caption, timing_line


@st.cache_resource(show_spinner="Loading the model and opening the collection…")
def get_client(store: str) -> SearchClient:
    """One client (model + store) per process, shared by every query and session."""
    return SearchClient(store)


def show_error_and_stop(message: str) -> None:
    st.error(message)
    st.stop()


def main() -> None:
    st.set_page_config(page_title="twinrank", layout="wide")
    st.title("twinrank")
    st.caption(
        "Retrieve fast, rerank smart: bi-encoder results on the left, reranked on the right."
    )
    store = os.environ.get(STORE_ENV, "")
    if not store or not Path(store).exists():
        st.info(
            "No collection yet. Ingest a folder of images first:\n\n"
            "`twinrank ingest ~/Pictures --store ~/.twinrank/store`\n\n"
            "then start the app with `twinrank ui --store ~/.twinrank/store`."
        )
        st.stop()
    try:
        client = get_client(store)
    except StoreBusyError as error:
        show_error_and_stop(f"The collection is busy: {error}")
    except (StoreError, ModelLoadError) as error:
        show_error_and_stop(str(error))
    with st.sidebar:
        stats = client.stats()
        st.metric("Images", stats["images"])
        st.caption(f"Model: `{stats['model_id']}`")
        k = st.slider("Results", min_value=1, max_value=50, value=8, key="k")
    query = st.text_input("What are you looking for?", key="query",
                          placeholder="a small red circle left of a large blue square")
    if not query.strip():
        st.caption("Type a query and press Enter.")
        return
    before, after = client.compare(query, k=k)
    if not after:
        st.warning("The collection has no images yet.")
        return
    st.caption(timing_line(after.timings))
    left, right = st.columns(2)
    left.subheader("Before: bi-encoder")
    right.subheader("After: reranked")
    for first, second in zip(before, after, strict=False):
        col_a, col_b = st.columns(2)
        with col_a:
            st.image(first.path, caption=caption(first, "before", k), width=160)
        with col_b:
            st.image(second.path, caption=caption(second, "after", k), width=160)


main()

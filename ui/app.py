"""twinrank's Streamlit app: type a query, see the results before and after reranking.

Run it through ``twinrank ui --store PATH`` (the store location arrives in the
TWINRANK_UI_STORE environment variable). The page only ever shows files that belong to
the collection: every image is a thumbnail of a path in a stored point's payload, and
nothing the browser sends is used as a path. Errors become one readable message, never a
stack trace on the page (the details go to the terminal running the app).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import streamlit as st
from streamlit.runtime.uploaded_file_manager import UploadedFile

from twinrank.search import (
    ModelLoadError,
    QueryError,
    SearchClient,
    SearchFilter,
    StoreBusyError,
    StoreError,
    read_info,
)
from twinrank.ui.examples import Example, read_examples
from twinrank.ui.facets import Facets, FilterChoices, collect_facets
from twinrank.ui.launch import MAX_UPLOAD_MB, STORE_ENV
from twinrank.ui.lookup import (
    RERANK_OFF,
    UnknownImageError,
    client_with_reranker,
    reranker_names,
    search_by_image,
    similar_to,
    source_payload,
)
from twinrank.ui.render import before_after, details_if_asked, grid, source_card
from twinrank.ui.results_grid import MODE_KEY, SIMILAR_KEY
from twinrank.ui.thumbs import (
    THUMBS_DIR,
    ImageReadError,
    ThumbnailCache,
    collection_paths,
    open_image,
)
from twinrank.ui.views import markdown_safe, path_name

log = logging.getLogger("twinrank.ui")
FRAGMENT_ENV = "TWINRANK_UI_FRAGMENT"
HOW_TO_INGEST = (
    "Ingest a folder of images first:\n\n"
    "`twinrank ingest ~/Pictures --store ~/.twinrank/store`\n\n"
    "then start the app with `twinrank ui --store ~/.twinrank/store` "
    "(or try `twinrank demo` for a generated collection)."
)


@dataclass(frozen=True)
class Settings:
    """What the sidebar asks for."""

    k: int
    rerank: bool
    reranker: str
    filters: SearchFilter | None


@st.cache_resource(show_spinner="Loading the model and opening the collection…")
def get_client(store: str) -> SearchClient:
    """One client (model + store) per process, shared by every query and session."""
    return SearchClient(store)


@st.cache_data(ttl=60, show_spinner=False)
def get_examples(store: str) -> list[Example]:
    return read_examples(store)


@st.cache_resource(show_spinner=False)
def get_thumbs(store: str) -> ThumbnailCache:
    return ThumbnailCache(Path(store) / THUMBS_DIR)


@st.cache_data(ttl=3600, show_spinner="Reading the collection's folders and dates…")
def get_facets(store: str, images: int) -> Facets:
    """Filter choices, re-read when the image count changes (or after an hour: 100k
    payloads take seconds to read)."""
    return collect_facets(get_client(store).store.iter_payloads())


def open_collection(store: str) -> SearchClient:
    """The collection's client, or a friendly page saying why there is none (then stop)."""
    if not store or read_info(Path(store)) is None:
        st.info(f"No collection yet at {markdown_safe(store) or '(none given)'}. "
                f"{HOW_TO_INGEST}")
        st.stop()
    try:
        return get_client(store)
    except StoreBusyError as error:
        st.warning(f"The collection is busy. {markdown_safe(str(error))}")
    except ModelLoadError as error:
        st.error(f"The collection's model could not be loaded. {markdown_safe(str(error))}")
    except StoreError as error:
        st.error(markdown_safe(str(error)))
    st.stop()
    raise AssertionError("unreachable")  # st.stop() raises


def sidebar(client: SearchClient, store: str) -> Settings:
    stats = client.stats()
    st.metric("Images", f"{stats['images']:,}")
    st.caption(f"Model: {markdown_safe(str(stats['model_id']))}  \n"
               f"Reranker cache: {stats['token_bytes_per_image'] / 1000:.1f} kB per image")
    k = st.slider("Results", min_value=1, max_value=50, value=8, key="k")
    own = getattr(client.reranker, "name", None)  # the collection's trained one, or None
    if client.reranker_note:  # no trained reranker: say so, never rerank with noise
        st.info(markdown_safe(client.reranker_note))
    rerank = st.toggle("Rerank", value=own is not None, key="rerank",
                       help="Reorder the bi-encoder's top candidates with the cross-encoder.")
    names = [n for n in reranker_names()
             if n != RERANK_OFF and (n != "fused" or own == "fused")]
    reranker = st.selectbox("Reranker", names, key="reranker", disabled=not rerank)
    st.subheader("Filters")
    facets = get_facets(store, int(stats["images"]))
    return Settings(k=k, rerank=rerank, reranker=str(reranker),
                    filters=facets.to_filter(filter_choices(facets)))


def filter_choices(facets: Facets) -> FilterChoices:
    by_label = {facets.folder_label(folder): folder for folder, _ in facets.folders}
    label = st.selectbox("Folder", list(by_label), key="folder") if by_label else None
    folder = by_label.get(label) if label else None
    formats = st.multiselect("File types", facets.formats, key="formats",
                             placeholder="All file types")
    first_day = last_day = None
    if facets.first_day and facets.last_day and facets.first_day < facets.last_day:
        picked = st.date_input("Taken between", value=(facets.first_day, facets.last_day),
                               min_value=facets.first_day, max_value=facets.last_day,
                               key="dates")
        if isinstance(picked, tuple) and len(picked) == 2:
            first_day, last_day = picked
    return FilterChoices(folder=folder, formats=tuple(formats), first_day=first_day,
                         last_day=last_day)


def set_mode(mode: str) -> None:
    st.session_state[MODE_KEY] = mode
    st.session_state.pop(SIMILAR_KEY, None)


def use_example(query: str) -> None:
    """Example button callback: put ``query`` in the search box and search it."""
    st.session_state["query"] = query
    set_mode("text")


def example_buttons(examples: list[Example]) -> None:
    """The collection's measured examples as one-click queries (the demo has them)."""
    if not examples:
        return
    with st.container(horizontal=True, gap="small", key="examples"):
        st.caption("Try:")
        for index, example in enumerate(examples):
            st.button(markdown_safe(example.query), key=f"example-{index}",
                      on_click=use_example,
                      args=(example.query,), type="tertiary",
                      help=f"The bi-encoder ranks the image it describes "
                           f"{'#' + str(example.bi_rank) if example.bi_rank else 'nowhere'}, "
                           f"the reranker #{example.rerank_rank}.")


def search_inputs() -> tuple[str, UploadedFile | None]:
    query = st.text_input("What are you looking for?", key="query", on_change=set_mode,
                          args=("text",),
                          placeholder="a small red circle left of a large blue square")
    with st.expander("Search by image"):
        upload = st.file_uploader("An image to find similar ones to",
                                  type=["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif",
                                        "tiff"], key="upload", on_change=set_mode,
                                  args=("image",), max_upload_size=MAX_UPLOAD_MB)
    return query, upload


def show_results(client: SearchClient, store: str, settings: Settings) -> None:
    query, upload = search_inputs()
    thumbs = get_thumbs(store)
    mode = st.session_state.get(MODE_KEY, "text")
    k, filters = settings.k, settings.filters
    if mode == "similar" and st.session_state.get(SIMILAR_KEY):
        point_id = str(st.session_state[SIMILAR_KEY])
        payload = source_payload(client, point_id)
        if not payload:
            raise UnknownImageError("That image is no longer in the collection; search again.")
        name = path_name((collection_paths(payload) or ["?"])[0])
        st.button("← Back to the query", on_click=set_mode, args=("text",), key="back")
        source_card(thumbs, point_id, payload, name)
        results = similar_to(client, point_id, k, filters)
        title = f"More like {name}"
    elif mode == "image" and upload is not None:
        image = open_image(upload)
        st.image(image, caption="Your image", width=160)
        results = search_by_image(client, image, k, filters)
        title = "Nearest to your image"
    elif not query.strip():
        st.caption("Type a query and press Enter, or search by image.")
        return
    elif settings.rerank:
        ranked = client_with_reranker(client, settings.reranker)
        before, after = ranked.compare(query, k=k, filters=filters)
        if after:
            before_after(thumbs, before, after, k, after.timings)
            details_if_asked(client, thumbs)
            return
        results, title = after, ""
    else:
        results = client.search(query, k=k, rerank=False, filters=filters)
        title = "Bi-encoder order (rerank off)"
    if not results:
        st.warning("No image matches these filters; widen them in the sidebar.")
        return
    grid(thumbs, results, title, results.timings)
    details_if_asked(client, thumbs)


def results_area(store: str, settings: Settings) -> None:
    """Examples, the search box and the results. A fragment: a new query reruns only this
    part of the page, not the sidebar and its facets, so the page answers at about the
    speed of the search itself."""
    client = get_client(store)
    with friendly_errors():
        example_buttons(get_examples(store))
        show_results(client, store, settings)


if os.environ.get(FRAGMENT_ENV, "1") != "0":  # "0": whole-page reruns (bench baseline)
    results_area = st.fragment(results_area)


def main() -> None:
    st.set_page_config(page_title="twinrank", page_icon="🔎", layout="wide")
    st.markdown("#### twinrank · retrieve fast, rerank smart: bi-encoder results on the "
                "left, reranked on the right")
    store = os.environ.get(STORE_ENV, "")
    client = open_collection(store)
    with friendly_errors():
        with st.sidebar:
            settings = sidebar(client, store)
        if client.store.count() == 0:
            st.info(f"The collection is empty. {HOW_TO_INGEST}")
            return
        results_area(store, settings)


@contextlib.contextmanager
def friendly_errors() -> Iterator[None]:
    """Errors as one readable message on the page, never a stack trace. A message is
    shown as text, never as Markdown: it may name an uploaded file, a path or a query."""
    try:
        yield
    except StoreBusyError as error:
        st.warning(f"The collection is busy. {markdown_safe(str(error))}")
    except (QueryError, StoreError, ModelLoadError, UnknownImageError, ImageReadError) as error:
        st.error(markdown_safe(str(error)))
    except Exception as error:  # the last line of defence: never a stack trace on the page
        log.exception("twinrank ui: unexpected error")
        st.error(markdown_safe(f"Something went wrong ({type(error).__name__}: {error}).")
                 + " The details are in the terminal running `twinrank ui`.")


main()

"""Search: the Qdrant store, the SearchClient and filters.

``SearchClient`` is imported lazily: rerankers use this package's result types, and the
client uses the rerankers.
"""

from typing import Any

from twinrank.search.hits import Hit, SearchResults
from twinrank.store import (
    CollectionInfo,
    CollectionMismatchError,
    StoreBusyError,
    StoreError,
    VectorStore,
    open_store,
)
from twinrank.store.filters import SearchFilter

__all__ = [
    "CollectionInfo",
    "CollectionMismatchError",
    "Hit",
    "QueryError",
    "SearchClient",
    "SearchFilter",
    "SearchResults",
    "StoreBusyError",
    "StoreError",
    "VectorStore",
    "collection_info",
    "open_store",
]


def __getattr__(name: str) -> Any:
    if name in ("SearchClient", "QueryError", "collection_info"):
        from twinrank.search import client

        return getattr(client, name)
    raise AttributeError(name)

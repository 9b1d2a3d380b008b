"""Search: the Python client people script against, its result types and ranking.

    >>> from twinrank.search import SearchClient, SearchFilter  # doctest: +SKIP
    >>> with SearchClient("~/.twinrank/store") as client:  # doctest: +SKIP
    ...     hits = client.search("a dog on a beach", k=5)

Store errors a caller may want to catch (``StoreError``, ``CollectionMismatchError``)
live in ``twinrank.store``; ``SearchFilter`` is re-exported here because every filtered
search takes one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twinrank.search.hits import Hit, SearchResults
from twinrank.store.filters import SearchFilter

if TYPE_CHECKING:
    from twinrank.search.client import QueryError, SearchClient

__all__ = ["Hit", "QueryError", "SearchClient", "SearchFilter", "SearchResults"]


def __getattr__(name: str) -> Any:
    # The client loads torch and the model; imported on first use (PEP 562), so the
    # fast query path (search.fast) and the result types come without it.
    if name in ("QueryError", "SearchClient"):
        from twinrank.search import client

        return getattr(client, name)
    raise AttributeError(f"module 'twinrank.search' has no attribute {name!r}")

"""Search: the Python client people script against, its result types and ranking.

    >>> from twinrank.search import SearchClient, SearchFilter  # doctest: +SKIP
    >>> with SearchClient("~/.twinrank/store") as client:  # doctest: +SKIP
    ...     hits = client.search("a dog on a beach", k=5)

Store errors a caller may want to catch (``StoreError``, ``CollectionMismatchError``)
live in ``twinrank.store``; ``SearchFilter`` is re-exported here because every filtered
search takes one.
"""

from twinrank.search.client import QueryError, SearchClient
from twinrank.search.hits import Hit, SearchResults
from twinrank.store.filters import SearchFilter

__all__ = ["Hit", "QueryError", "SearchClient", "SearchFilter", "SearchResults"]

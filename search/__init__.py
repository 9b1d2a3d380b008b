"""Search: the Python client people script against, its result types and ranking.

    >>> from twinrank.search import SearchClient, SearchFilter  # doctest: +SKIP
    >>> with SearchClient("~/.twinrank/store") as client:  # doctest: +SKIP
    ...     hits = client.search("a dog on a beach", k=5)

Everything a search user (a script, the app) touches is importable from here, so the
app stands on this package alone: the client, its results and filters, the errors a
search can raise (defined in ``store`` and ``models``) and the reranker names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twinrank.search.hits import Hit, SearchResults
from twinrank.search.route import QueryError
from twinrank.store import CollectionMismatchError, StoreBusyError, StoreError, read_info
from twinrank.store.filters import SearchFilter, folder_key

if TYPE_CHECKING:
    from twinrank.models.factory import ModelLoadError
    from twinrank.search.client import SearchClient

__all__ = ["CollectionMismatchError", "Hit", "ModelLoadError", "QueryError", "SearchClient",
           "SearchFilter", "SearchResults", "StoreBusyError", "StoreError", "folder_key",
           "read_info", "reranker_names"]


def reranker_names() -> list[str]:
    """The rerankers a search can name (the registry's), "none" left out.

    >>> reranker_names()
    ['fused', 'blip-itm']
    """
    from twinrank.rerank.registry import available_rerankers

    return [kind.name for kind in available_rerankers() if kind.name != "none"]


def __getattr__(name: str) -> Any:
    # The client and the model factory load torch; imported on first use (PEP 562), so
    # the fast query path (search.fast) and the result types come without it.
    if name == "SearchClient":
        from twinrank.search import client

        return getattr(client, name)
    if name == "ModelLoadError":
        from twinrank.models.factory import ModelLoadError

        return ModelLoadError
    raise AttributeError(f"module 'twinrank.search' has no attribute {name!r}")

"""Searches the app runs beyond text: by an uploaded image, "more like this", and with a
chosen reranker.

Thin wrappers over SearchClient's image search and ``similar``, with the app's error
type and timing labels.

Example:
    >>> results = similar_to(client, hit.id, k=8)           # excludes the image itself
    >>> hit.id in [h.id for h in results], len(results)   # 6 images in the collection
    (False, 5)
    >>> results = search_by_image(client, Image.open("photos/2021/a0.png"), k=8)
    >>> results[0].path.endswith("a0.png")                 # the same picture comes first
    True
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from twinrank.search import SearchClient, SearchFilter
from twinrank.search import reranker_names as search_reranker_names
from twinrank.search.client import QueryError
from twinrank.search.hits import SearchResults

RERANK_OFF = "off"


class UnknownImageError(LookupError):
    """A point id that is not in the collection (any more)."""


def search_by_image(
    client: SearchClient, image: Image.Image, k: int, filters: SearchFilter | None = None
) -> SearchResults:
    """The ``k`` collection images nearest to ``image`` (bi-encoder order, timed)."""
    results = client.search(image, k=k, filters=filters)  # image queries are never reranked
    results.timings["image_encode_ms"] = results.timings.pop("encode_ms")
    return results


def similar_to(
    client: SearchClient, point_id: str, k: int, filters: SearchFilter | None = None
) -> SearchResults:
    """The ``k`` images most like stored point ``point_id``, without the point itself."""
    try:
        results = client.similar(point_id, k=k, filters=filters)
    except QueryError:
        raise UnknownImageError(
            "That image is no longer in the collection; run the search again."
        ) from None
    results.timings.pop("encode_ms", None)  # a stored vector was read, nothing encoded
    return results


def source_payload(client: SearchClient, point_id: str) -> dict[str, Any]:
    """The payload of a stored point, or an empty dict when it is gone."""
    return dict(client.store.get_payloads([point_id]).get(point_id, {}))


def reranker_names() -> list[str]:
    """The rerankers the app offers (from the reranker registry), "off" last."""
    names = search_reranker_names()
    return [*names, RERANK_OFF]


def client_with_reranker(client: SearchClient, name: str) -> SearchClient:
    """A client sharing ``client``'s model and store with reranker ``name``.

    Nothing is loaded twice: the new client reuses the open store and the loaded model,
    and the registry keeps loaded reranker weights once per process.
    """
    current = getattr(client.reranker, "name", None)
    if name in (RERANK_OFF, current):
        return client
    return SearchClient(client.store, model=client.model, reranker=name,
                        rerank_top_k=client.rerank_top_k, bi_weight=client.bi_weight)

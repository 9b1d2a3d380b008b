"""Searches the app runs beyond text: by an uploaded image, "more like this", and with a
chosen reranker.

Kept in one small module on the store's own API (``get_vectors``, ``search``) and the
model's image tower, so it can switch to SearchClient methods for image search when the
client has them.

Example:
    >>> results = similar_to(client, hit.id, k=8)           # excludes the image itself
    >>> results = search_by_image(client, Image.open(f), k=8)
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from PIL import Image

from models.device import autocast, inference_dtype
from rerank.registry import available_rerankers
from search import SearchClient, SearchFilter
from search.hits import Hit, SearchResults

RERANK_OFF = "off"


class UnknownImageError(LookupError):
    """A point id that is not in the collection (any more)."""


@torch.inference_mode()
def image_vector(client: SearchClient, image: Image.Image) -> np.ndarray:
    """The normalised image vector (D,) for a PIL image, as ingest would compute it."""
    model = client.model
    pixels = model.preprocess_images([image]).to(model.device)
    with autocast(model.device, inference_dtype(model.device)):
        encoded = model.encode_image(pixels)
    vector: np.ndarray = encoded.image_vector[0].float().cpu().numpy()
    return vector


def search_by_image(
    client: SearchClient, image: Image.Image, k: int, filters: SearchFilter | None = None
) -> SearchResults:
    """The ``k`` collection images nearest to ``image`` (bi-encoder order, timed)."""
    started = time.perf_counter()
    vector = image_vector(client, image)
    timings = {"image_encode_ms": _ms_since(started)}
    return _nearest(client, vector, k, filters, timings, exclude=None)


def similar_to(
    client: SearchClient, point_id: str, k: int, filters: SearchFilter | None = None
) -> SearchResults:
    """The ``k`` images most like stored point ``point_id``, without the point itself."""
    vectors = client.store.get_vectors([point_id])
    if point_id not in vectors:
        raise UnknownImageError(
            "That image is no longer in the collection; run the search again."
        )
    return _nearest(client, vectors[point_id], k, filters, {}, exclude=point_id)


def source_payload(client: SearchClient, point_id: str) -> dict[str, Any]:
    """The payload of a stored point, or an empty dict when it is gone."""
    return client.store.get_payloads([point_id]).get(point_id, {})


def reranker_names() -> list[str]:
    """The rerankers the app offers (from the reranker registry), "off" last."""
    names = [kind.name for kind in available_rerankers() if kind.name != "none"]
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


def _nearest(
    client: SearchClient,
    vector: np.ndarray,
    k: int,
    filters: SearchFilter | None,
    timings: dict[str, float],
    exclude: str | None,
) -> SearchResults:
    started = time.perf_counter()
    stored = client.store.search(vector, k + (1 if exclude else 0), filters)
    timings["search_ms"] = _ms_since(started)
    kept = [s for s in stored if s.id != exclude][:k]
    hits = [Hit(id=s.id, path=_first_path(s.payload), score=s.score, bi_score=s.score,
                bi_rank=rank, payload=s.payload) for rank, s in enumerate(kept, start=1)]
    return SearchResults(hits, timings)


def _first_path(payload: dict[str, Any]) -> str:
    paths = payload.get("paths") or [""]
    return str(paths[0])


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0

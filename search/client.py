"""SearchClient: the Python client people script against.

It opens a collection, loads the model the collection was built with (or checks the one
you pass), and runs text -> vector -> kNN -> (optional) rerank, timing each stage.

Example:
    >>> with SearchClient("~/.twinrank/photos") as client:
    ...     for hit in client.search("a dog on a beach", k=5):
    ...         print(hit.rerank_rank, hit.bi_rank, hit.path)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models import TwinModel, create_model, model_id
from models.device import autocast, inference_dtype
from rerank.base import Reranker, rerank_hits
from search.filters import SearchFilter
from search.hits import Hit, SearchResults
from search.store import CollectionInfo, CollectionMismatchError, VectorStore, open_store

DEFAULT_RERANK_TOP_K = 20


class QueryError(ValueError):
    """The query itself is unusable (empty, say); the message says why."""


def collection_info(
    model: TwinModel, source: str, pretrained: str | None = None
) -> CollectionInfo:
    """The identity a collection built with ``model`` records."""
    if Path(source).exists():
        source = str(Path(source).resolve())
    return CollectionInfo(
        model_id=model_id(model),
        vector_size=model.config.embed_dim,
        token_count=model.config.image_token_count,
        token_width=model.config.fusion.width,
        model_source=source,
        model_pretrained=pretrained,
    )


def load_collection_model(info: CollectionInfo, device: str | None = None) -> TwinModel:
    """The model a collection was built with, loaded from the source it recorded."""
    model = create_model(info.model_source, pretrained=info.model_pretrained, device=device)
    if model_id(model) != info.model_id:
        raise CollectionMismatchError(
            f"The collection was built with model {info.model_id!r} but {info.model_source!r} "
            f"now loads as {model_id(model)!r} (the weights changed?). Pass the original "
            f"model with --model, or re-ingest into a new --store."
        )
    return model


class SearchClient:
    """Search one collection by text, with optional reranking.

    ``store`` is a store location (a folder for the embedded engine) or an open store;
    ``model`` defaults to the one the collection records; ``reranker`` defaults to the
    model's own fusion head over cached tokens ("fused"); pass None to disable it.
    """

    def __init__(
        self,
        store: str | Path | VectorStore,
        model: TwinModel | None = None,
        reranker: Reranker | str | None = "fused",
        device: str | None = None,
        rerank_top_k: int = DEFAULT_RERANK_TOP_K,
        bi_weight: float = 0.0,
    ) -> None:
        self.store = open_store(store) if isinstance(store, str | Path) else store
        if model is None:
            model = load_collection_model(self.store.info, device)
        elif model_id(model) != self.store.info.model_id:
            raise CollectionMismatchError(
                f"This collection was built with model {self.store.info.model_id!r}, "
                f"not {model_id(model)!r}. Use the model it was built with."
            )
        self.model = model
        self.reranker = self._make_reranker(reranker)
        self.rerank_top_k = rerank_top_k
        self.bi_weight = bi_weight
        self._dtype = inference_dtype(model.device)

    def _make_reranker(self, reranker: Reranker | str | None) -> Reranker | None:
        if reranker is None or not isinstance(reranker, str):
            return reranker
        from rerank.registry import make_reranker  # specs: "fused", "blip-itm:<id>", "none"

        return make_reranker(reranker, self.model, self.store, device=str(self.model.device))

    @torch.inference_mode()
    def encode_query(self, text: str) -> np.ndarray:
        """The normalised query vector (D,) for ``text``."""
        with autocast(self.model.device, self._dtype):
            encoded = self.model.encode_text(self.model.tokenize([text]))
        vector: np.ndarray = encoded.text_vector[0].float().cpu().numpy()
        return vector

    def search(
        self,
        text: str,
        k: int = 10,
        rerank: bool = True,
        filters: SearchFilter | None = None,
        rerank_top_k: int | None = None,
    ) -> SearchResults:
        """The best ``k`` images for ``text``: bi-encoder top-k, then reranked.

        The reranker sees ``max(k, rerank_top_k)`` candidates and the best ``k`` are kept.
        """
        query = _clean_query(text)
        if k < 1:
            raise QueryError(f"k must be at least 1, got {k}.")
        timings: dict[str, float] = {}
        started = time.perf_counter()
        vector = self.encode_query(query)
        timings["encode_ms"] = _ms_since(started)
        do_rerank = rerank and self.reranker is not None
        depth = max(k, rerank_top_k or self.rerank_top_k) if do_rerank else k
        started = time.perf_counter()
        stored = self.store.search(vector, depth, filters)
        timings["search_ms"] = _ms_since(started)
        hits = [
            Hit(id=s.id, path=_first_path(s.payload), score=s.score, bi_score=s.score,
                bi_rank=rank, payload=s.payload)
            for rank, s in enumerate(stored, start=1)
        ]
        if do_rerank and self.reranker is not None:
            started = time.perf_counter()
            hits = rerank_hits(self.reranker, query, hits, self.bi_weight)
            timings["rerank_ms"] = _ms_since(started)
        return SearchResults(hits[:k], timings)

    def compare(
        self, text: str, k: int = 10, filters: SearchFilter | None = None
    ) -> tuple[list[Hit], SearchResults]:
        """The top ``k`` before reranking (bi-encoder order) and after, from one search.

        Both lists carry both stages' ranks, so a view can say how far each image moved.
        """
        depth = max(k, self.rerank_top_k)
        results = self.search(text, k=depth, rerank=True, filters=filters, rerank_top_k=depth)
        before = sorted(results, key=lambda h: h.bi_rank)[:k]
        after = SearchResults(list(results[:k]), results.timings)
        return before, after

    def stats(self) -> dict[str, Any]:
        info = self.store.info
        return {
            "images": self.store.count(),
            "model_id": info.model_id,
            "vector_size": info.vector_size,
            "token_bytes_per_image": info.bytes_per_image(),
            "reranker": getattr(self.reranker, "name", None),
        }

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> SearchClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _clean_query(text: str) -> str:
    query = " ".join(str(text).split())
    if not query:
        raise QueryError("The query is empty; type what you are looking for.")
    return query


def _first_path(payload: dict[str, Any]) -> str:
    paths = payload.get("paths") or [""]
    return str(paths[0])


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0

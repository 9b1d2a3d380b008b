"""One route for a query: vector -> store search -> hits -> rerank -> ``apply_scores``.

Every search runs ``run_query``: the Python client and the app (torch encoders, any
registered reranker) and ``twinrank search``'s torch-free fast path (an exported query
side: ONNX Runtime for open_clip models, numpy for BLIP). They differ only in how the
query became a vector and which reranker scores the candidates, never in how hits are
made, how deep the store is searched, how scores are combined or what is timed. It
imports no torch.

Example:
    >>> results = run_query(store, vector, k=5)  # doctest: +SKIP
    >>> step = RerankStep(reranker, RerankQuery("a red circle"), 20, 1.0)  # doctest: +SKIP
    >>> reranked = run_query(store, vector, k=5, rerank=step)  # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from twinrank.rerank.base import Reranker, RerankQuery
from twinrank.search.hits import Hit, SearchResults
from twinrank.search.ranking import apply_scores, candidates
from twinrank.store import VectorStore
from twinrank.store.filters import SearchFilter


class QueryError(ValueError):
    """The query itself is unusable (empty, say); the message says why."""


@dataclass(frozen=True)
class RerankStep:
    """How the candidates of one text query are reranked: by whom, how many, how blended
    (``rerank + bi_weight * bi``, see ``search.ranking.apply_scores``)."""

    reranker: Reranker
    query: RerankQuery
    top_k: int
    bi_weight: float


def run_query(store: VectorStore, vector: np.ndarray, k: int, *,
              filters: SearchFilter | None = None, modality: str = "text",
              rerank: RerankStep | None = None,
              timings: dict[str, float] | None = None) -> SearchResults:
    """The best ``k`` hits for a query vector, reranked when ``rerank`` says how.

    The store is searched ``max(k, rerank.top_k)`` deep when reranking, so the reranker
    sees its candidates and the best ``k`` are kept. ``timings`` (the encoding's) gain
    ``search_ms`` and ``rerank_ms``.
    """
    timings = dict(timings or {})
    depth = max(k, rerank.top_k) if rerank is not None else k
    started = time.perf_counter()
    stored = store.search(vector, depth, filters, modality=modality)
    timings["search_ms"] = ms_since(started)
    hits = [Hit(id=s.id, path=first_path(s.payload), score=s.score, bi_score=s.score,
                bi_rank=rank, payload=dict(s.payload))
            for rank, s in enumerate(stored, start=1)]
    if rerank is not None and hits:
        started = time.perf_counter()
        scores = rerank.reranker.score(rerank.query, candidates(hits))
        hits = apply_scores(hits, scores, rerank.bi_weight)
        timings["rerank_ms"] = ms_since(started)
    return SearchResults(hits[:k], timings)


def clean_query(text: str) -> str:
    """``text`` with its white space folded, or ``QueryError`` when nothing is left."""
    query = " ".join(str(text).split())
    if not query:
        raise QueryError("The query is empty; type what you are looking for.")
    return query


def check_k(k: int) -> None:
    """``QueryError`` unless at least one result is asked for."""
    if k < 1:
        raise QueryError(f"k must be at least 1, got {k}.")


def first_path(payload: Any) -> str:
    """The first of a stored image's paths (an identical file under two names has two)."""
    paths = payload.get("paths") or [""]
    return str(paths[0])


def ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0

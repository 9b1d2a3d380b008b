"""The reranker seam: anything that reorders hits for a query."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from search.hits import Hit


class Reranker(Protocol):
    """Reorders the top-k hits of the bi-encoder for one text query."""

    name: str

    def score(self, query: str, hits: Sequence[Hit]) -> np.ndarray:
        """One score per hit, higher is better."""
        ...


def apply_scores(
    hits: Sequence[Hit], scores: np.ndarray, bi_weight: float = 0.0
) -> list[Hit]:
    """Hits reordered by reranker scores, optionally blended with the bi-encoder's.

    With ``bi_weight`` = 0 the order is the reranker's alone; otherwise both scores are
    min-max normalised over the k hits and mixed as ``(1 - w) * rerank + w * bi``.
    Ties keep the bi-encoder order.

    Example:
        >>> [h.id for h in apply_scores(hits, np.array([0.1, 0.9]))]
        ['b', 'a']
    """
    scores = np.asarray(scores, dtype=np.float64)
    final = scores
    if bi_weight:
        bi = np.array([h.bi_score for h in hits], dtype=np.float64)
        final = (1 - bi_weight) * _minmax(scores) + bi_weight * _minmax(bi)
    order = sorted(range(len(hits)), key=lambda i: (-final[i], hits[i].bi_rank))
    return [
        hits[i].with_rerank(float(scores[i]), rank, float(final[i]))
        for rank, i in enumerate(order, start=1)
    ]


def rerank_hits(
    reranker: Reranker, query: str, hits: Sequence[Hit], bi_weight: float = 0.0
) -> list[Hit]:
    if not hits:
        return []
    return apply_scores(hits, reranker.score(query, hits), bi_weight)


def _minmax(values: np.ndarray) -> np.ndarray:
    span = values.max() - values.min()
    return (values - values.min()) / span if span > 0 else np.zeros_like(values)

"""Ordering hits by reranker scores: the one place both ranks are put on each hit.

``apply_scores`` is a pure function (hits and scores in, new hits out), so the search
client, ``twinrank rerank`` and the app reorder the same way, and a test can check the
order without a model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from twinrank.rerank.base import Candidate, Reranker, RerankQuery
from twinrank.search.hits import Hit


def candidates(hits: Sequence[Hit]) -> list[Candidate]:
    """What a reranker needs of each hit: its point id and its file."""
    return [Candidate(h.id, h.path) for h in hits]


def apply_scores(
    hits: Sequence[Hit], scores: np.ndarray, bi_weight: float = 0.0
) -> list[Hit]:
    """Hits reordered by reranker scores plus ``bi_weight`` times the bi-encoder's.

    The final score is ``rerank + w * bi`` on the raw scores, as BLIP's retrieval
    evaluation adds its ITC cosine to the ITM logit (``w`` = 1 there; a model trained here
    records the ``w`` its validation split chose). With ``w`` = 0 the order is the
    reranker's alone. Ties keep the bi-encoder order. Each hit keeps its ``bi_rank`` and gains its
    ``rerank_rank``, so a view can say how far it moved.

    Example:
        >>> hits = [Hit("a", "a.jpg", 0.9, 0.9, 1), Hit("b", "b.jpg", 0.8, 0.8, 2)]
        >>> [(h.id, h.bi_rank, h.rerank_rank) for h in apply_scores(hits, np.array([0.1, 0.9]))]
        [('b', 2, 1), ('a', 1, 2)]
    """
    if not (bi_weight >= 0.0 and np.isfinite(bi_weight)):
        raise ValueError(f"bi_weight must be a number >= 0, got {bi_weight}.")
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(hits),):
        raise ValueError(f"Expected {len(hits)} reranker scores, got shape {scores.shape}.")
    final = scores
    if bi_weight:
        bi = np.array([h.bi_score for h in hits], dtype=np.float64)
        final = scores + bi_weight * bi
    order = sorted(range(len(hits)), key=lambda i: (-final[i], hits[i].bi_rank))
    return [
        hits[i].with_rerank(float(scores[i]), rank, float(final[i]))
        for rank, i in enumerate(order, start=1)
    ]


def rerank_hits(
    reranker: Reranker, query: str | RerankQuery, hits: Sequence[Hit], bi_weight: float = 0.0
) -> list[Hit]:
    """``hits`` reordered by ``reranker`` for ``query`` (see :func:`apply_scores`)."""
    if not hits:
        return []
    return apply_scores(hits, reranker.score(query, candidates(hits)), bi_weight)


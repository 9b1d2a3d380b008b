"""The result types every search and rerank stage returns, so stages chain."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class Hit:
    """One image in a result list, with the scores and ranks of both stages.

    Ranks are 1-based. ``score`` is what the list is ordered by: the reranker's score
    after reranking, the bi-encoder's cosine similarity before.
    """

    id: str
    path: str
    score: float
    bi_score: float
    bi_rank: int
    payload: dict[str, Any] = field(default_factory=dict, compare=False)
    rerank_score: float | None = None
    rerank_rank: int | None = None

    @property
    def moved(self) -> int | None:
        """Places gained by reranking (positive = moved up), None before reranking."""
        return None if self.rerank_rank is None else self.bi_rank - self.rerank_rank

    def with_rerank(self, score: float, rank: int, final_score: float | None = None) -> Hit:
        return replace(
            self,
            rerank_score=score,
            rerank_rank=rank,
            score=score if final_score is None else final_score,
        )


class SearchResults(list[Hit]):
    """A list of hits that also carries how long each stage took (milliseconds)."""

    def __init__(self, hits: list[Hit] | None = None, timings: dict[str, float] | None = None):
        super().__init__(hits or [])
        self.timings: dict[str, float] = dict(timings or {})

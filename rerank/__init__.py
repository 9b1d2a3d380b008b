"""Rerankers: reorder the bi-encoder's top-k with a cross-encoder."""

from rerank.base import Reranker, apply_scores, rerank_hits
from rerank.fused import FusedReranker

__all__ = ["FusedReranker", "Reranker", "apply_scores", "rerank_hits"]

"""Rerankers: reorder the bi-encoder's top-k with a cross-encoder."""

from rerank.base import CrossEncoder, ImageReadError, Reranker, apply_scores, open_rgb, rerank_hits
from rerank.fused import FusedReranker
from rerank.itm import BlipItmReranker
from rerank.registry import available_rerankers, make_reranker

__all__ = [
    "BlipItmReranker",
    "CrossEncoder",
    "FusedReranker",
    "ImageReadError",
    "Reranker",
    "apply_scores",
    "available_rerankers",
    "make_reranker",
    "open_rgb",
    "rerank_hits",
]

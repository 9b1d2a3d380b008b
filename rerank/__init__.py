"""Rerankers: reorder the bi-encoder's top-k with a cross-encoder."""

from twinrank.rerank.base import (
    CrossEncoder,
    ImageReadError,
    Reranker,
    apply_scores,
    open_rgb,
    rerank_hits,
)
from twinrank.rerank.fused import FusedReranker
from twinrank.rerank.itm import BlipItmReranker
from twinrank.rerank.registry import available_rerankers, make_reranker

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

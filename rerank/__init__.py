"""Rerankers: scores for k candidate images of one text query (scores in, scores out).

``Reranker`` is the protocol; ``make_reranker`` builds one by name from the registry.
Ordering search hits by the scores is ``twinrank.search.ranking``'s job.
"""

from twinrank.rerank.base import (
    Candidate,
    CrossEncoder,
    ImageReadError,
    Reranker,
    RerankerContext,
    RerankerKind,
    RerankQuery,
    TokenSource,
    UntrainedRerankerError,
    open_rgb,
)
from twinrank.rerank.fused import FusedReranker
from twinrank.rerank.itm import BlipItmReranker
from twinrank.rerank.registry import available_rerankers, default_reranker, make_reranker

__all__ = [
    "BlipItmReranker",
    "Candidate",
    "CrossEncoder",
    "FusedReranker",
    "ImageReadError",
    "RerankQuery",
    "Reranker",
    "RerankerContext",
    "RerankerKind",
    "TokenSource",
    "UntrainedRerankerError",
    "available_rerankers",
    "default_reranker",
    "make_reranker",
    "open_rgb",
]

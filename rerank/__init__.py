"""Rerankers: scores for k candidate images of one text query (scores in, scores out).

``Reranker`` is the protocol; ``make_reranker`` builds one by name from the registry.
Ordering search hits by the scores is ``twinrank.search.ranking``'s job.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from twinrank.rerank.fused import FusedReranker
    from twinrank.rerank.itm import BlipItmReranker
    from twinrank.rerank.registry import available_rerankers, default_reranker, make_reranker

# Imported on first use (PEP 562): the rerankers load torch, and ``rerank.base`` (the
# protocol and candidates, which search.ranking orders by) must not make everyone pay it.
_LAZY = {"FusedReranker": "fused", "BlipItmReranker": "itm",
         "available_rerankers": "registry", "default_reranker": "registry",
         "make_reranker": "registry"}

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


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"twinrank.rerank.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'twinrank.rerank' has no attribute {name!r}")

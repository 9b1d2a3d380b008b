"""Rerankers by name: one registry for the CLI, the Python client, the app and evaluation.

A spec is ``name`` or ``name:argument``:

- ``fused`` — the collection model's own cross-encoder over tokens cached at ingest,
- ``blip-itm`` or ``blip-itm:<hugging-face-id-or-folder>`` — BLIP image-text matching,
- ``none`` — no reranking (the bi-encoder order); the one spelling of "off".

Adding a reranker is one module that defines it and its ``KIND`` (a ``RerankerKind``),
plus one line in ``_KINDS`` below. Which reranker a collection gets when none is named is
``default_reranker``'s rule (``rerank.policy``): its model's own, when that was trained,
else none.

Example:
    >>> [kind.name for kind in available_rerankers()]
    ['fused', 'blip-itm', 'none']
    >>> make_reranker("none") is None
    True
"""

from __future__ import annotations

from typing import Any

from twinrank.rerank import fused, itm
from twinrank.rerank.base import Reranker, RerankerContext, RerankerKind, untrained_allowed
from twinrank.rerank.policy import blend_weight, default_reranker

__all__ = ["KINDS", "available_rerankers", "blend_weight", "clear_reranker_cache",
           "default_reranker", "make_reranker", "parse_reranker_spec"]


def _no_reranker(argument: str, context: RerankerContext) -> None:
    return None


NONE = RerankerKind("none", "no reranking: the bi-encoder's order", "none", _no_reranker)
_KINDS: tuple[RerankerKind, ...] = (fused.KIND, itm.KIND, NONE)
KINDS = {kind.name: kind for kind in _KINDS}


def available_rerankers() -> list[RerankerKind]:
    """Every kind of reranker ``make_reranker`` understands."""
    return list(_KINDS)


def parse_reranker_spec(spec: str) -> tuple[RerankerKind, str]:
    """``"blip-itm:Salesforce/blip-itm-base-coco"`` -> (the blip-itm kind, the id).

    >>> parse_reranker_spec("blip-itm")[1]
    'Salesforce/blip-itm-base-coco'
    """
    name, _, argument = str(spec).strip().partition(":")
    kind = KINDS.get(name.strip().lower())
    if kind is None:
        known = ", ".join(k.example for k in _KINDS)
        raise ValueError(f"Unknown reranker {spec!r}; use one of: {known}.")
    if argument and kind.default_argument is None:
        raise ValueError(f"Reranker {kind.name!r} takes no ':{argument}'; use {kind.example!r}.")
    return kind, argument.strip() or (kind.default_argument or "")


def make_reranker(
    spec: str,
    model: Any | None = None,
    tokens: Any | None = None,
    device: str | None = None,
    precision: str = "auto",
) -> Reranker | None:
    """The reranker ``spec`` names, or None for ``"none"``.

    ``model`` and ``tokens`` are the collection's model and its cached-token source (a
    store); ``device`` places rerankers that bring their own weights (default: CUDA when
    available). A ``fused`` reranker on a model whose cross-encoder was never trained is
    refused with a sentence (``UntrainedRerankerError``).
    """
    kind, argument = parse_reranker_spec(spec)
    context = RerankerContext(model, tokens, device, precision, untrained_allowed())
    return kind.build(argument, context)


def clear_reranker_cache() -> None:
    """Forget loaded rerankers (tests; or to free memory after switching)."""
    itm.clear_loaded()

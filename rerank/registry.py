"""Rerankers by name: one factory for the CLI, the Python client and the UI.

A spec is ``kind`` or ``kind:argument``:

- ``fused`` — the collection model's fusion head over tokens cached at ingest (default),
- ``blip-itm`` or ``blip-itm:<hugging-face-id-or-folder>`` — BLIP image-text matching,
- ``none`` — no reranking (the bi-encoder order).

Loaded weights are kept once per process per (spec, device, precision), so an app that
asks for the same reranker on every query never reloads it. The fused reranker loads
nothing of its own (it wraps the collection's model), so it is simply built.

Example:
    >>> [kind.name for kind in available_rerankers()]
    ['fused', 'blip-itm', 'none']
    >>> make_reranker("fused", model, store).name
    'fused'
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from twinrank.models import TwinModel
from twinrank.models.device import pick_device
from twinrank.rerank.base import Reranker
from twinrank.rerank.fused import FusedReranker
from twinrank.rerank.itm import DEFAULT_BLIP_ITM, BlipItmReranker
from twinrank.store import VectorStore


@dataclass(frozen=True)
class RerankerKind:
    """One kind of reranker the factory can build, as a UI or ``--help`` lists it."""

    name: str
    description: str
    example: str
    needs_twin_model: bool  # built on the collection's own TwinModel
    default_argument: str | None = None  # kinds that take ``:argument`` have a default


_KINDS = (
    RerankerKind("fused", "the collection model's fusion head over image tokens cached at "
                 "ingest: no image is read at query time", "fused", needs_twin_model=True),
    RerankerKind("blip-itm", "BLIP image-text matching (transformers) by Hugging Face id or "
                 "local folder: re-reads every candidate image",
                 f"blip-itm:{DEFAULT_BLIP_ITM}", needs_twin_model=False,
                 default_argument=DEFAULT_BLIP_ITM),
    RerankerKind("none", "no reranking: the bi-encoder's order", "none", needs_twin_model=False),
)
KINDS = {kind.name: kind for kind in _KINDS}
DEFAULT_RERANKER = "fused"

_loaded: dict[tuple[str, str, str], Reranker] = {}
_lock = threading.Lock()


def available_rerankers() -> list[RerankerKind]:
    """Every kind of reranker ``make_reranker`` understands, default first."""
    return list(_KINDS)


def parse_reranker_spec(spec: str) -> tuple[RerankerKind, str]:
    """``"blip-itm:Salesforce/blip-itm-base-coco"`` -> (the blip-itm kind, the id)."""
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
    model: TwinModel | None = None,
    store: VectorStore | None = None,
    device: str | None = None,
    precision: str = "auto",
) -> Reranker | None:
    """The reranker ``spec`` names, or None for ``"none"``.

    ``model`` and ``store`` are the collection's (the fused reranker needs the model and
    reads cached tokens from the store; it runs on the model's device). ``device``
    places rerankers that bring their own weights; default: CUDA when available.
    """
    kind, argument = parse_reranker_spec(spec)
    if kind.name == "none":
        return None
    if kind.name == "fused":
        if model is None:
            raise ValueError("The 'fused' reranker needs a twinrank model; pass --model or "
                             "--store, or choose --reranker blip-itm.")
        return FusedReranker(model, store, precision=precision)
    key = (f"{kind.name}:{argument}", str(pick_device(device)), precision)
    with _lock:
        if key not in _loaded:
            _loaded[key] = BlipItmReranker.from_pretrained(argument, key[1], precision)
        return _loaded[key]


def clear_reranker_cache() -> None:
    """Forget loaded rerankers (tests; or to free memory after switching)."""
    with _lock:
        _loaded.clear()

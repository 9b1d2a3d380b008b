"""Rerank image files given by path (``twinrank rerank "query" a.jpg b.jpg ...``).

The files need not be in any store: each reranker reads the pixels itself. Hits keep the
order the files were given in as their first-stage rank, so the output says how far
each file moved.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from twinrank.models import TwinModel, create_model
from twinrank.rerank.base import CrossEncoder, open_rgb
from twinrank.rerank.registry import make_reranker, parse_reranker_spec
from twinrank.search.client import load_collection_model
from twinrank.search.hits import Hit
from twinrank.search.ranking import apply_scores
from twinrank.store import read_info


@dataclass(frozen=True)
class RerankFilesRequest:
    """What ``twinrank rerank`` was asked: a query, image files and which reranker."""

    query: str
    images: Sequence[Path]
    reranker: str = "fused"
    model: str | None = None  # twinrank model (name or folder) for the fused reranker
    pretrained: str | None = None
    store: Path | None = None  # or take the model this collection was built with
    device: str | None = None
    precision: str = "auto"
    batch_size: int = 32


def rerank_files(request: RerankFilesRequest) -> list[Hit]:
    """The files in ``request`` ordered by the chosen reranker, best first.

    Example:
        >>> request = RerankFilesRequest("a red circle", [Path("a.png"), Path("b.png")],
        ...                              model="models/demo")
        >>> rerank_files(request)[0].path  # doctest: +SKIP
        'b.png'
    """
    query = " ".join(request.query.split())
    if not query:
        raise ValueError("The query is empty; type what you are looking for.")
    if not request.images:
        raise ValueError("No image files given; pass one or more image paths after the query.")
    kind, _ = parse_reranker_spec(request.reranker)
    if kind.name == "none":
        raise ValueError("--reranker none has nothing to score; choose fused or blip-itm.")
    model = _twin_model(request) if kind.needs_model else None
    reranker = make_reranker(request.reranker, model, None, request.device, request.precision)
    if not isinstance(reranker, CrossEncoder):
        raise ValueError(f"Reranker {request.reranker!r} cannot score image files.")
    hits = [Hit(id=str(p), path=str(p), score=0.0, bi_score=0.0, bi_rank=rank)
            for rank, p in enumerate(request.images, start=1)]
    scores = [
        reranker.score_images(query, [open_rgb(h.path) for h in hits[i : i + request.batch_size]])
        for i in range(0, len(hits), request.batch_size)
    ]
    return apply_scores(hits, np.concatenate(scores))


def _twin_model(request: RerankFilesRequest) -> TwinModel:
    if request.model:
        return create_model(request.model, pretrained=request.pretrained, device=request.device)
    if request.store is not None:
        info = read_info(Path(request.store).expanduser())
        if info is None:
            raise ValueError(f"No collection at {str(request.store)!r}; pass --model or an "
                             f"existing --store.")
        return load_collection_model(info, request.device)
    raise ValueError("The fused reranker needs a twinrank model; pass --model (a name or "
                     "model folder) or --store (use the model that built that collection).")

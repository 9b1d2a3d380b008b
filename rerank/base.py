"""The reranker seam: scores in, scores out.

A reranker is anything with a ``name`` and ``score(query, candidates) -> (k,) scores``.
It knows nothing of search results: a ``Candidate`` is a point id (to look up image
tokens cached at ingest) and a path (for rerankers that read pixels), and the scores come
back in the candidates' order. Ordering hits by them, with both ranks on each hit, is the
search package's job (``search.ranking.apply_scores``), so a reranker can be written,
tested and evaluated without a store or a search client.

A ``RerankQuery`` may carry the query already encoded by the collection's model: the
search client encodes a text once, for the vector search, and a reranker built on the
same model (``encoded_by`` = its ``model_id``) reuses that encoding instead of running the
text tower again.

Example:
    >>> import numpy as np
    >>> class Shortest:  # any object of this shape is a Reranker; no base class needed
    ...     name = "shortest-path"
    ...     def score(self, query, candidates):
    ...         return -np.array([len(c.path) for c in candidates], dtype=np.float32)
    >>> Shortest().score(RerankQuery("a dog"), [Candidate("1", "a/b.jpg"), Candidate("2", "c.jpg")])
    array([-7., -5.], dtype=float32)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from twinrank.models.images import ImageReadError as ImageReadError  # raised by open_rgb
from twinrank.models.images import open_image

if TYPE_CHECKING:  # a type only: importing it loads torch, which ranking hits never needs
    from twinrank.models import TextEncoding


ALLOW_UNTRAINED_ENV = "TWINRANK_ALLOW_UNTRAINED_RERANKER"  # tests and experiments only


def untrained_allowed() -> bool:
    """Whether ``TWINRANK_ALLOW_UNTRAINED_RERANKER=1`` lets an untrained head score (read
    here, without torch, by the fused reranker and the fast query path alike)."""
    return os.environ.get(ALLOW_UNTRAINED_ENV, "").lower() in ("1", "true", "yes")


class UntrainedRerankerError(ValueError):
    """A reranker was asked of a model whose cross-encoder was never trained."""


@dataclass(frozen=True)
class Candidate:
    """One image to score: its point id (for cached tokens) and where the file is."""

    id: str
    path: str = ""


@dataclass(frozen=True)
class RerankQuery:
    """A text query, optionally with its encoding by the model ``encoded_by`` names.

    ``encoding`` holds one row (batch of 1), its padding trimmed: a ``TextEncoding`` from
    a torch model, or what an exported query side's cross-encoder reads (numpy arrays).
    """

    text: str
    encoding: TextEncoding | Any | None = None
    encoded_by: str = ""

    def encoding_for(self, model_id: str) -> Any | None:
        """The carried encoding when ``model_id`` made it, else None (encode again)."""
        return self.encoding if self.encoding is not None and self.encoded_by == model_id else None


def as_query(query: str | RerankQuery) -> RerankQuery:
    """Rerankers accept a plain string as well as a ``RerankQuery``."""
    return query if isinstance(query, RerankQuery) else RerankQuery(str(query))


@runtime_checkable
class Reranker(Protocol):
    """Scores k candidate images for one text query; higher is better."""

    name: str

    def score(self, query: str | RerankQuery, candidates: Sequence[Candidate]) -> np.ndarray:
        """One score per candidate, in the candidates' order."""
        ...


@runtime_checkable
class CrossEncoder(Reranker, Protocol):
    """A reranker that also scores raw pixels and ranks captions for an image.

    ``score_images`` ranks images for a text query (files that are not in a store);
    ``score_captions`` ranks captions for one image query, encoding the image once.
    """

    def score_images(self, query: str, images: Sequence[Image.Image]) -> np.ndarray:
        """One score per image for ``query``, higher is better."""
        ...

    def score_captions(self, image: Image.Image, captions: Sequence[str]) -> np.ndarray:
        """One score per caption for ``image``, higher is better."""
        ...


class TokenSource(Protocol):
    """Where cached image tokens come from: a store, or an evaluation corpus in memory."""

    def get_tokens(self, ids: Sequence[str]) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class RerankerContext:
    """What a reranker may be built on: the collection's model and its cached tokens.

    ``model`` is the collection's model (any family: a TwinModel, a SEP pair, BLIP);
    ``tokens`` serves its cached image tokens (a store, or an evaluation corpus).
    ``allow_untrained`` lets tests and experiments score with a cross-encoder that was
    never trained (its scores are noise); nothing a user runs sets it by default.
    """

    model: Any | None = None
    tokens: TokenSource | None = None
    device: str | None = None
    precision: str = "auto"
    allow_untrained: bool = False


@dataclass(frozen=True)
class RerankerKind:
    """One entry of the registry: how ``--reranker NAME[:ARGUMENT]`` is built.

    A new reranker is one module that defines its class and a ``KIND`` like this, plus
    its line in ``rerank.registry``.
    """

    name: str
    description: str
    example: str
    build: Callable[[str, RerankerContext], Reranker | None]
    default_argument: str | None = None  # kinds that take ``:argument`` have a default
    needs_model: bool = False  # built on the collection's own model
    reads_images: bool = False  # opens the candidates' files at query time


def open_rgb(path: str | Path) -> Image.Image:
    """An image file as upright RGB, or one ``ImageReadError`` naming the file and why.

    The project's one image reader (``models.images.open_image``) does the work: the same
    pixel and file-size limits as ingest, and a FIFO or device is refused, never waited on.

    Example:
        >>> open_rgb("photo.jpg").mode  # doctest: +SKIP
        'RGB'
    """
    return open_image(path)

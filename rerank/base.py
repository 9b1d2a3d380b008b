"""The reranker seams: anything that reorders hits for a query, and cross-encoders that
also read pixels (for files outside the store) and rerank captions for an image query."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from twinrank.search.hits import Hit


class ImageReadError(ValueError):
    """An image file a reranker was asked to read cannot be read; the message says which."""


@runtime_checkable
class Reranker(Protocol):
    """Reorders the top-k hits of the bi-encoder for one text query."""

    name: str

    def score(self, query: str, hits: Sequence[Hit]) -> np.ndarray:
        """One score per hit, higher is better."""
        ...


@runtime_checkable
class CrossEncoder(Reranker, Protocol):
    """A reranker that scores raw (text, image) pairs in both directions.

    ``score_images`` ranks images for a text query (files that are not in a store);
    ``score_captions`` ranks captions for one image query, encoding the image once.
    """

    def score_images(self, query: str, images: Sequence[Image.Image]) -> np.ndarray:
        """One score per image for ``query``, higher is better."""
        ...

    def score_captions(self, image: Image.Image, captions: Sequence[str]) -> np.ndarray:
        """One score per caption for ``image``, higher is better."""
        ...


def apply_scores(
    hits: Sequence[Hit], scores: np.ndarray, bi_weight: float = 0.0
) -> list[Hit]:
    """Hits reordered by reranker scores, optionally blended with the bi-encoder's.

    With ``bi_weight`` = 0 the order is the reranker's alone; otherwise both scores are
    min-max normalised over the k hits and mixed as ``(1 - w) * rerank + w * bi``.
    Ties keep the bi-encoder order.

    Example:
        >>> [h.id for h in apply_scores(hits, np.array([0.1, 0.9]))]
        ['b', 'a']
    """
    if not 0.0 <= bi_weight <= 1.0:
        raise ValueError(f"bi_weight must be between 0 and 1, got {bi_weight}.")
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(hits),):
        raise ValueError(f"Expected {len(hits)} reranker scores, got shape {scores.shape}.")
    final = scores
    if bi_weight:
        bi = np.array([h.bi_score for h in hits], dtype=np.float64)
        final = (1 - bi_weight) * _minmax(scores) + bi_weight * _minmax(bi)
    order = sorted(range(len(hits)), key=lambda i: (-final[i], hits[i].bi_rank))
    return [
        hits[i].with_rerank(float(scores[i]), rank, float(final[i]))
        for rank, i in enumerate(order, start=1)
    ]


def rerank_hits(
    reranker: Reranker, query: str, hits: Sequence[Hit], bi_weight: float = 0.0
) -> list[Hit]:
    """``hits`` reordered by ``reranker`` for ``query`` (see :func:`apply_scores`)."""
    if not hits:
        return []
    return apply_scores(hits, reranker.score(query, hits), bi_weight)


def open_rgb(path: str | Path) -> Image.Image:
    """An image file as upright RGB, or one clear error naming the file.

    Example:
        >>> open_rgb("photo.jpg").mode
        'RGB'
    """
    try:
        with Image.open(path) as opened:
            return ImageOps.exif_transpose(opened).convert("RGB")
    except FileNotFoundError:
        raise ImageReadError(f"Image {str(path)!r} does not exist; check the path.") from None
    except (UnidentifiedImageError, OSError) as error:
        raise ImageReadError(
            f"Cannot read image {str(path)!r} ({error}); pass a JPEG, PNG or WebP file."
        ) from None


def _minmax(values: np.ndarray) -> np.ndarray:
    span = values.max() - values.min()
    return (values - values.min()) / span if span > 0 else np.zeros_like(values)

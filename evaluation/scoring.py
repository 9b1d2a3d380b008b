"""Scoring (text, image) pairs with any registered reranker, and ranks from scores.

``RerankerScorer`` is the cross-encoder of the harness: it asks a ``Reranker`` (the one
``twinrank evaluate --reranker NAME`` names, built by the same registry search uses) to
score each caption's candidate images, through the same ``score(query, candidates)`` call
a search makes. For the collection model's own reranker the corpus serves the image
tokens cached at encoding time (float16, as a store holds them) and each caption's
encoding, so nothing is encoded twice; a reranker that reads pixels opens the corpus's
image files. Cross-encoding all pairs and reranking a top-k both go through it, so their
cost differs only in the number of pairs scored.

``best_positive_ranks`` is the one rank rule used for every mode and direction: a query's
rank is the number of *negative* candidates scoring at least as high as its best positive
(ties count against the query, as in :mod:`evaluation.metrics`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from twinrank.evaluation.encode import EncodedCorpus
from twinrank.models import TextEncoding
from twinrank.rerank.base import Candidate, Reranker, RerankQuery

_RANK_CHUNK = 512  # query rows per block when ranking, bounding the boolean temporaries


class PairScoring(Protocol):
    """What the harness needs from a cross-encoder: scores for pairs, counted."""

    batch_size: int
    pairs_scored: int

    def score(self, text_ids: np.ndarray, image_ids: np.ndarray) -> np.ndarray: ...

    def score_query(self, text_id: int, image_ids: np.ndarray) -> np.ndarray: ...


class CorpusTokens:
    """The corpus's cached image tokens as a ``TokenSource``: point id = image row."""

    def __init__(self, corpus: EncodedCorpus) -> None:
        self.tokens = corpus.image_tokens

    def get_tokens(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        return {i: self.tokens[int(i)] for i in ids}


class RerankerScorer:
    """Scores for (caption, image) pairs of one encoded corpus, from a ``Reranker``.

    ``model_id`` names the model that encoded the corpus: a reranker built on that model
    reuses the captions' encodings instead of running its text tower again.

    Example:
        >>> scorer = RerankerScorer(make_reranker("fused", model, CorpusTokens(corpus)),
        ...                         corpus, model.model_id)  # doctest: +SKIP
        >>> scorer.score(np.array([0, 0]), np.array([0, 1]))  # doctest: +SKIP
        array([ 2.1, -0.7], dtype=float32)
    """

    def __init__(self, reranker: Reranker, corpus: EncodedCorpus, model_id: str = "",
                 batch_size: int = 512) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.reranker = reranker
        self.corpus = corpus
        self.model_id = model_id
        self.batch_size = batch_size
        self.pairs_scored = 0

    def score(self, text_ids: np.ndarray, image_ids: np.ndarray) -> np.ndarray:
        """Scores (P,) float32 for the pairs ``(text_ids[p], image_ids[p])``, one reranker
        call per caption over its images."""
        text_ids = np.asarray(text_ids, dtype=np.int64)
        image_ids = np.asarray(image_ids, dtype=np.int64)
        if text_ids.shape != image_ids.shape or text_ids.ndim != 1:
            raise ValueError("text_ids and image_ids must be 1-D arrays of the same length")
        out = np.empty(text_ids.size, dtype=np.float32)
        order = np.argsort(text_ids, kind="stable")
        bounds = np.flatnonzero(np.diff(text_ids[order])) + 1
        for rows in np.split(order, bounds):
            if rows.size:
                out[rows] = self._score(int(text_ids[rows[0]]), image_ids[rows])
        self.pairs_scored += int(text_ids.size)
        return out

    def score_query(self, text_id: int, image_ids: np.ndarray) -> np.ndarray:
        """One caption against many images (k,): the reranker's per-query call, as a
        search makes it."""
        image_ids = np.asarray(image_ids, dtype=np.int64)
        self.pairs_scored += int(image_ids.size)
        return self._score(text_id, image_ids)

    def query(self, text_id: int) -> RerankQuery:
        """Caption ``text_id`` with its encoding (one row, padding trimmed)."""
        corpus = self.corpus
        length = max(int(corpus.text_mask[text_id].sum()), 1)
        encoding = TextEncoding(
            torch.from_numpy(corpus.text_vectors[text_id : text_id + 1]),
            torch.from_numpy(corpus.text_tokens[text_id : text_id + 1, :length]),
            torch.from_numpy(corpus.text_mask[text_id : text_id + 1, :length]))
        return RerankQuery(corpus.captions[text_id], encoding, self.model_id)

    def _score(self, text_id: int, image_ids: np.ndarray) -> np.ndarray:
        paths = self.corpus.image_paths
        query = self.query(text_id)
        chunks = []
        for start in range(0, image_ids.size, self.batch_size):
            chunk = image_ids[start : start + self.batch_size].tolist()
            candidates = [Candidate(str(i), paths[i] if paths else "") for i in chunk]
            chunks.append(np.asarray(self.reranker.score(query, candidates), dtype=np.float32))
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)


def best_positive_ranks(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Zero-based rank of each query's best positive among its candidates, shape (n_q,).

    ``scores`` and ``positive`` are (n_q, n_c); a row without a positive gets -1. One
    positive per row gives ``metrics.t2i_ranks``; an image's captions as positives give
    ``metrics.i2t_ranks``.

    >>> best_positive_ranks(np.array([[0.2, 0.9, 0.9]]), np.array([[False, True, False]]))
    array([1])
    """
    scores = np.asarray(scores)
    positive = np.asarray(positive, dtype=bool)
    if scores.shape != positive.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and positive {positive.shape} must be the same "
                         "2-D shape")
    ranks = np.empty(scores.shape[0], dtype=np.int64)
    for start in range(0, scores.shape[0], _RANK_CHUNK):
        block = scores[start : start + _RANK_CHUNK]
        is_positive = positive[start : start + _RANK_CHUNK]
        best = np.where(is_positive, block, -np.inf).max(axis=1)  # (chunk,)
        beaten_by = ((block >= best[:, None]) & ~is_positive).sum(axis=1)
        ranks[start : start + block.shape[0]] = np.where(is_positive.any(axis=1), beaten_by, -1)
    return ranks


def t2i_positive(text_ids: np.ndarray, text_to_image: np.ndarray, n_images: int,
                 also_true: np.ndarray | None = None) -> np.ndarray:
    """Mask (len(text_ids), n_images): True at each caption's own image, and at the images
    of its ``also_true`` (caption, image) pairs when given.

    >>> t2i_positive(np.array([1]), np.array([0, 1]), 3, np.array([[1, 2]])).tolist()
    [[False, True, True]]
    """
    text_ids = np.asarray(text_ids, dtype=np.int64)
    mask = np.zeros((len(text_ids), n_images), dtype=bool)
    mask[np.arange(len(text_ids)), text_to_image[text_ids]] = True
    if also_true is not None:
        _mark_pairs(mask, text_ids, also_true[:, 0], also_true[:, 1])
    return mask


def i2t_positive(image_ids: np.ndarray, text_to_image: np.ndarray,
                 also_true: np.ndarray | None = None) -> np.ndarray:
    """Mask (len(image_ids), n_texts): True at each image's own captions, and at the
    captions of its ``also_true`` (caption, image) pairs when given.

    >>> i2t_positive(np.array([1]), np.array([0, 1]), np.array([[0, 1]])).tolist()
    [[True, True]]
    """
    image_ids = np.asarray(image_ids, dtype=np.int64)
    mask = text_to_image[None, :] == image_ids[:, None]
    if also_true is not None:
        _mark_pairs(mask, image_ids, also_true[:, 1], also_true[:, 0])
    return mask


def _mark_pairs(mask: np.ndarray, queries: np.ndarray, pair_queries: np.ndarray,
                pair_candidates: np.ndarray) -> None:
    """Set ``mask[row, c]`` for every pair whose query is ``queries[row]``."""
    rows, pairs = np.nonzero(queries[:, None] == pair_queries[None, :])
    mask[rows, pair_candidates[pairs]] = True


def recall_from_ranks(ranks: np.ndarray, ks: tuple[int, ...], prefix: str) -> dict[str, float]:
    """Recall@K in percent over the ranks given (queries without a positive left out)."""
    ranks = np.asarray(ranks)
    ranks = ranks[ranks >= 0]
    if ranks.size == 0:
        return {f"{prefix}_recall@{k}": float("nan") for k in ks}
    return {f"{prefix}_recall@{k}": 100.0 * float(np.mean(ranks < k)) for k in ks}


__all__ = [
    "CorpusTokens",
    "PairScoring",
    "RerankerScorer",
    "best_positive_ranks",
    "i2t_positive",
    "recall_from_ranks",
    "t2i_positive",
]

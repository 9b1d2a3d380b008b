"""Scoring (text, image) pairs with the fusion head, and ranks from scores.

``PairScorer`` is the cross-encoder of the harness: the model's fusion head over the
corpus's cached image tokens (float16, as a store holds them) and the captions' token
states, batched over pairs. Cross-encoding all pairs and reranking a top-k both go through
it, so their cost differs only in the number of pairs scored.

``best_positive_ranks`` is the one rank rule used for every mode and direction: a query's
rank is the number of *negative* candidates scoring at least as high as its best positive
(ties count against the query, as in :mod:`evaluation.metrics`).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from twinrank.evaluation.encode import EncodedCorpus
from twinrank.models import TwinModel
from twinrank.models.device import autocast, inference_dtype

_RANK_CHUNK = 512  # query rows per block when ranking, bounding the boolean temporaries


class PairScoring(Protocol):
    """What the harness needs from a cross-encoder: scores for pairs, counted."""

    batch_size: int
    pairs_scored: int

    def score(self, text_ids: np.ndarray, image_ids: np.ndarray) -> np.ndarray: ...

    def score_query(self, text_id: int, image_ids: np.ndarray) -> np.ndarray: ...


class PairScorer:
    """Match logits for (caption, image) pairs of one encoded corpus.

    Example:
        >>> scorer = PairScorer(model, corpus, batch_size=512)  # doctest: +SKIP
        >>> scorer.score(np.array([0, 0]), np.array([0, 1]))  # doctest: +SKIP
        array([ 2.1, -0.7], dtype=float32)
    """

    def __init__(self, model: TwinModel, corpus: EncodedCorpus, batch_size: int = 512,
                 precision: str = "auto") -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model
        self.device = model.device
        self.dtype = inference_dtype(self.device, precision)
        self.batch_size = batch_size
        self.image_tokens = torch.from_numpy(corpus.image_tokens).to(self.device)  # fp16
        self.text_tokens = torch.from_numpy(corpus.text_tokens).to(self.device)
        self.text_mask = torch.from_numpy(corpus.text_mask).to(self.device)
        self.pairs_scored = 0

    @torch.inference_mode()
    def score(self, text_ids: np.ndarray, image_ids: np.ndarray) -> np.ndarray:
        """Logits (P,) float32 for the pairs ``(text_ids[p], image_ids[p])``."""
        text_ids = np.asarray(text_ids, dtype=np.int64)
        image_ids = np.asarray(image_ids, dtype=np.int64)
        if text_ids.shape != image_ids.shape or text_ids.ndim != 1:
            raise ValueError("text_ids and image_ids must be 1-D arrays of the same length")
        out = np.empty(text_ids.size, dtype=np.float32)
        for start in range(0, text_ids.size, self.batch_size):
            stop = start + self.batch_size
            texts = torch.from_numpy(text_ids[start:stop]).to(self.device)
            images = torch.from_numpy(image_ids[start:stop]).to(self.device)
            out[start:stop] = self._logits(
                self.text_tokens[texts], self.text_mask[texts], self.image_tokens[images])
        self.pairs_scored += int(text_ids.size)
        return out

    @torch.inference_mode()
    def score_query(self, text_id: int, image_ids: np.ndarray) -> np.ndarray:
        """One caption against many images (k,): the reranker's per-query call.

        Like ``FusedReranker.score_tokens``, the query's token states are expanded over
        the k cached token sets, not copied; the text encoding is timed as its own stage.
        """
        image_ids = np.asarray(image_ids, dtype=np.int64)
        tokens = self.text_tokens[text_id : text_id + 1]
        mask = self.text_mask[text_id : text_id + 1]
        out = np.empty(image_ids.size, dtype=np.float32)
        for start in range(0, image_ids.size, self.batch_size):
            chunk = torch.from_numpy(image_ids[start : start + self.batch_size])
            size = chunk.numel()
            out[start : start + size] = self._logits(
                tokens.expand(size, -1, -1), mask.expand(size, -1),
                self.image_tokens[chunk.to(self.device)])
        self.pairs_scored += int(image_ids.size)
        return out

    def _logits(self, text_tokens: torch.Tensor, text_mask: torch.Tensor,
                image_tokens: torch.Tensor) -> np.ndarray:
        length = int(text_mask.any(dim=0).nonzero().max().item()) + 1  # trim shared padding
        with autocast(self.device, self.dtype):
            logits = self.model.match_logit(
                text_tokens[:, :length], text_mask[:, :length], image_tokens.float())
        result: np.ndarray = logits.float().cpu().numpy()
        return result


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
    "PairScorer",
    "PairScoring",
    "best_positive_ranks",
    "i2t_positive",
    "recall_from_ranks",
    "t2i_positive",
]

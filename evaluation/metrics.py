"""Retrieval metrics computed the way the literature reports them.

Every function takes a similarity matrix ``scores`` of shape (n_texts, n_images), where
higher means a better match, and ``text_to_image`` of shape (n_texts,) giving the index of
each caption's image (MSCOCO has five captions per image, so images repeat).

Tie rule, used everywhere ranks are computed: a competitor whose score *equals* the true
item's score counts as ranked above it. A constant scorer therefore scores zero at Recall@1
instead of being rewarded by an index-order tie-break, and results do not depend on the
order in which the corpus was stored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)
_CHUNK_ROWS = 1024  # bounds the boolean temporaries to about 1024 x n_candidates

MetricFn = Callable[[np.ndarray, np.ndarray], dict[str, float]]


def _check_inputs(scores: np.ndarray, text_to_image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores)
    text_to_image = np.asarray(text_to_image)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D (n_texts, n_images), got shape {scores.shape}")
    if text_to_image.shape != (scores.shape[0],):
        raise ValueError(
            f"text_to_image must have shape ({scores.shape[0]},) to match scores "
            f"{scores.shape}, got {text_to_image.shape}"
        )
    if not np.issubdtype(text_to_image.dtype, np.integer):
        raise ValueError(
            f"text_to_image must hold integer image indices, got {text_to_image.dtype}"
        )
    if text_to_image.size and (text_to_image.min() < 0 or text_to_image.max() >= scores.shape[1]):
        raise ValueError(f"text_to_image holds indices outside [0, {scores.shape[1]})")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or infinite values; rankings would be undefined")
    return scores, text_to_image


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    if not ks or any(int(k) != k or k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {tuple(ks)}")
    return tuple(int(k) for k in ks)


def t2i_ranks(scores: np.ndarray, text_to_image: np.ndarray) -> np.ndarray:
    """Zero-based rank of each caption's image among all images (0 means first).

    Why: recall at any K and per-query error analysis both derive from these ranks.
    Ties count against the caption (see the module docstring).

    >>> t2i_ranks(np.array([[0.9, 0.1], [0.5, 0.5]]), np.array([0, 1])).tolist()
    [0, 1]
    """
    scores, text_to_image = _check_inputs(scores, text_to_image)
    ranks = np.empty(scores.shape[0], dtype=np.int64)
    for start in range(0, scores.shape[0], _CHUNK_ROWS):
        block = scores[start : start + _CHUNK_ROWS]  # (chunk, n_images)
        rows = np.arange(block.shape[0])
        true_score = block[rows, text_to_image[start : start + _CHUNK_ROWS]]  # (chunk,)
        ranks[start : start + block.shape[0]] = (block >= true_score[:, None]).sum(axis=1) - 1
    return ranks


def i2t_ranks(scores: np.ndarray, text_to_image: np.ndarray) -> np.ndarray:
    """Zero-based rank of each image's best-ranked caption among all captions.

    Why: in the standard protocol an image query is answered as soon as *any* of its
    captions appears, so the rank is the number of other images' captions scoring at least
    as high as its best caption. Images without captions cannot be queries; their rank is
    -1 and :func:`i2t_recall` leaves them out (they still act as distractors for t2i).

    >>> i2t_ranks(np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]]), np.array([0, 1, 0])).tolist()
    [0, 0]
    """
    scores, text_to_image = _check_inputs(scores, text_to_image)
    image_scores = scores.T  # (n_images, n_texts)
    ranks = np.full(image_scores.shape[0], -1, dtype=np.int64)
    for start in range(0, image_scores.shape[0], _CHUNK_ROWS):
        block = image_scores[start : start + _CHUNK_ROWS]  # (chunk, n_texts)
        image_ids = np.arange(start, start + block.shape[0])
        positive = text_to_image[None, :] == image_ids[:, None]  # (chunk, n_texts)
        best = np.where(positive, block, -np.inf).max(axis=1)  # (chunk,)
        beaten_by = ((block >= best[:, None]) & ~positive).sum(axis=1)
        ranks[start : start + block.shape[0]] = np.where(positive.any(axis=1), beaten_by, -1)
    return ranks


def _recall_from_ranks(ranks: np.ndarray, ks: Sequence[int], prefix: str) -> dict[str, float]:
    return {f"{prefix}_recall@{k}": 100.0 * float(np.mean(ranks < k)) for k in _check_ks(ks)}


def t2i_recall(
    scores: np.ndarray, text_to_image: np.ndarray, ks: Sequence[int] = DEFAULT_KS
) -> dict[str, float]:
    """Text-to-image Recall@K in percent: share of captions whose image is in the top K.

    >>> t2i_recall(np.array([[0.9, 0.1], [0.5, 0.5]]), np.array([0, 1]), ks=(1,))
    {'t2i_recall@1': 50.0}
    """
    return _recall_from_ranks(t2i_ranks(scores, text_to_image), ks, "t2i")


def i2t_recall(
    scores: np.ndarray, text_to_image: np.ndarray, ks: Sequence[int] = DEFAULT_KS
) -> dict[str, float]:
    """Image-to-text Recall@K in percent: share of images with any caption in the top K.

    Images that have no caption are not queries (see :func:`i2t_ranks`).

    >>> i2t_recall(np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([0, 1]), ks=(1,))
    {'i2t_recall@1': 100.0}
    """
    ranks = i2t_ranks(scores, text_to_image)
    ranks = ranks[ranks >= 0]
    if ranks.size == 0:
        raise ValueError("i2t recall needs at least one image with a caption; none has one")
    return _recall_from_ranks(ranks, ks, "i2t")


def recall_metrics(
    scores: np.ndarray, text_to_image: np.ndarray, ks: Sequence[int] = DEFAULT_KS
) -> dict[str, float]:
    """Both directions plus ``mean_recall``, the mean of all reported recalls (percent).

    Why: papers summarise a model by the mean of the six numbers R@1/5/10 in both
    directions; keeping it next to them makes tables comparable at a glance.

    >>> m = recall_metrics(np.eye(3), np.arange(3))
    >>> m["mean_recall"], m["t2i_recall@1"]
    (100.0, 100.0)
    """
    metrics = t2i_recall(scores, text_to_image, ks) | i2t_recall(scores, text_to_image, ks)
    metrics["mean_recall"] = float(np.mean(list(metrics.values())))
    return metrics


def fold_average(
    metric_fn: MetricFn,
    scores: np.ndarray,
    text_to_image: np.ndarray,
    n_folds: int = 5,
    fold_size: int = 1000,
) -> dict[str, float]:
    """Average a metric over consecutive image folds (the MSCOCO "1k test" protocol).

    Why: MSCOCO 1k results are the mean over five folds of 1000 consecutive test images
    with their captions, each scored as its own small corpus; full-5k numbers are not
    comparable with them. Pass extra arguments with ``functools.partial``.

    >>> s = np.eye(4)
    >>> fold_average(recall_metrics, s, np.arange(4), n_folds=2, fold_size=2)["mean_recall"]
    100.0
    """
    scores, text_to_image = _check_inputs(scores, text_to_image)
    if n_folds < 1 or fold_size < 1:
        raise ValueError(f"n_folds and fold_size must be positive, got {n_folds}, {fold_size}")
    if scores.shape[1] != n_folds * fold_size:
        raise ValueError(
            f"{n_folds} folds of {fold_size} images need exactly {n_folds * fold_size} images, "
            f"but scores has {scores.shape[1]}"
        )
    per_fold: list[dict[str, float]] = []
    for fold in range(n_folds):
        first = fold * fold_size
        captions = np.flatnonzero((text_to_image >= first) & (text_to_image < first + fold_size))
        if captions.size == 0:
            raise ValueError(
                f"fold {fold} (images {first}..{first + fold_size - 1}) has no captions"
            )
        sub_scores = scores[np.ix_(captions, np.arange(first, first + fold_size))]
        per_fold.append(metric_fn(sub_scores, text_to_image[captions] - first))
    keys = per_fold[0].keys()
    if any(result.keys() != keys for result in per_fold):
        raise ValueError("metric_fn returned different keys for different folds")
    return {key: float(np.mean([result[key] for result in per_fold])) for key in keys}


def topk_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best candidates per query, best first, shape (n_q, min(k, n_c)).

    Why: the first stage of retrieve-and-rerank must hand the reranker the same candidates
    on every run. Equal scores are ordered by lower candidate index (a stable sort), and k
    above the number of candidates means "all of them".

    >>> topk_indices(np.array([[0.2, 0.9, 0.9, 0.1]]), 3).tolist()
    [[1, 2, 0]]
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D (n_queries, n_candidates), got shape {scores.shape}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN; the top-k would be undefined")
    order = np.argsort(-scores, axis=1, kind="stable")  # (n_q, n_c)
    return order[:, : min(k, scores.shape[1])]


def _ranks_as_scores(values: np.ndarray) -> np.ndarray:
    """Per-value count of strictly smaller values: order- and tie-preserving, exact."""
    return np.searchsorted(np.sort(values), values, side="left").astype(np.float64)


def coop_ranking(
    first_stage_scores: np.ndarray, rerank_scores_topk: np.ndarray, k: int
) -> np.ndarray:
    """Scores of a retrieve-and-rerank (COOP) system, shape (n_q, n_c), for the metrics.

    Why: COOP is evaluated with the same Recall@K as a single model, so its ranking must
    be a score matrix. ``rerank_scores_topk[q, j]`` scores candidate
    ``topk_indices(first_stage_scores, k)[q, j]``. Those candidates end up above all others
    in reranker order; the rest keep first-stage order. The values are ranks, meaningful
    only for ordering; ties in either stage stay ties, so the metrics' tie rule applies.

    >>> coop_ranking(np.array([[0.9, 0.8, 0.1]]), np.array([[0.0, 5.0]]), k=2).tolist()
    [[1.0, 2.0, 0.0]]
    """
    first = np.asarray(first_stage_scores, dtype=np.float64)
    top = topk_indices(first, k)  # (n_q, k_eff)
    rerank = np.asarray(rerank_scores_topk, dtype=np.float64)
    if rerank.shape != top.shape:
        raise ValueError(
            f"rerank_scores_topk must have shape {top.shape} (queries x min(k, candidates)), "
            f"got {rerank.shape}"
        )
    if not np.all(np.isfinite(rerank)):
        raise ValueError("rerank_scores_topk contain NaN or infinite values")
    combined = np.empty_like(first)
    in_top = np.zeros(first.shape, dtype=bool)
    np.put_along_axis(in_top, top, True, axis=1)
    for query in range(first.shape[0]):
        rest = ~in_top[query]
        tail = first[query, rest]
        # tail scores in (-n_c, 0]; reranked scores in [1, k]
        combined[query, rest] = _ranks_as_scores(tail) - tail.size + 1
        combined[query, top[query]] = _ranks_as_scores(rerank[query]) + 1
    return combined


def combine_scores(first: np.ndarray, second: np.ndarray, weight: float) -> np.ndarray:
    """A reranked score plus ``weight`` times the bi-encoder's: ``first + weight * second``.

    The search path's formula (``search.ranking.apply_scores``): BLIP's retrieval
    evaluation adds its ITC cosine (``second``) to its ITM logit (``first``) with weight 1.

    >>> combine_scores(np.array([[1.0, 3.0]]), np.array([[0.5, 0.25]]), 2.0).tolist()
    [[2.0, 3.5]]
    """
    first = np.asarray(first, dtype=np.float64)
    second = np.asarray(second, dtype=np.float64)
    if first.shape != second.shape or first.ndim != 2:
        raise ValueError(
            f"first and second must be 2-D with the same shape, got {first.shape}, {second.shape}"
        )
    if not (weight >= 0.0 and np.isfinite(weight)):
        raise ValueError(f"weight must be a number >= 0, got {weight}")
    return first + weight * second


def latency_summary(samples_seconds: Sequence[float], stage: str = "") -> dict[str, float]:
    """Summarise per-query timings in milliseconds: count, mean, p50, p95.

    Why: users feel the typical (p50) and the slow (p95) query, not only the mean. With a
    ``stage`` name the keys are prefixed (``rerank_ms_p50``), so stages merge into one row.
    Percentiles use numpy's linear interpolation.

    >>> latency_summary([0.001, 0.003], stage="rerank")["rerank_ms_mean"]
    2.0
    """
    samples = np.asarray(samples_seconds, dtype=np.float64)
    if samples.ndim != 1 or samples.size == 0:
        raise ValueError("latency_summary needs a non-empty sequence of durations in seconds")
    if not np.all(np.isfinite(samples)) or (samples < 0).any():
        raise ValueError("latency samples must be finite, non-negative durations in seconds")
    millis = samples * 1000.0
    prefix = f"{stage}_" if stage else ""
    return {
        f"{prefix}count": float(samples.size),
        f"{prefix}ms_mean": float(millis.mean()),
        f"{prefix}ms_p50": float(np.percentile(millis, 50)),
        f"{prefix}ms_p95": float(np.percentile(millis, 95)),
    }


def ce_all_guard(n_queries: int, n_candidates: int, limit: int, force: bool = False) -> int:
    """Number of pairs a cross-encoder over all pairs would score; refuse it above ``limit``.

    Why: cross-encoding every (query, candidate) pair grows with corpus size times queries
    (MSCOCO 5k: 25k x 5k = 125M forward passes), so it must be asked for explicitly.

    >>> ce_all_guard(10, 20, limit=1000)
    200
    """
    if n_queries < 0 or n_candidates < 0:
        raise ValueError(f"counts must be non-negative, got {n_queries} and {n_candidates}")
    n_pairs = n_queries * n_candidates
    if n_pairs > limit and not force:
        raise ValueError(
            f"cross-encoder over all pairs would score {n_pairs} pairs ({n_queries} queries x "
            f"{n_candidates} candidates), above the limit {limit}; pass --allow-ce-all / "
            "force=True or use retrieve-and-rerank"
        )
    return n_pairs


__all__ = [
    "DEFAULT_KS",
    "MetricFn",
    "ce_all_guard",
    "combine_scores",
    "coop_ranking",
    "fold_average",
    "i2t_ranks",
    "i2t_recall",
    "latency_summary",
    "recall_metrics",
    "t2i_ranks",
    "t2i_recall",
    "topk_indices",
]

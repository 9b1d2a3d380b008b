"""Whether a model's reranker helps, measured on held-out captions, and with which blend.

``measure_validation`` runs the harness (bi-encoder and COOP@k recall, both directions)
on a validation split, then chooses the bi-encoder score's weight ``w`` in the reranked
score ``match + w * bi`` (the search path's formula: BLIP ranks by ITM logit + ITC cosine
the same way) on a small grid, and reports the gain of the best COOP@k over the
bi-encoder at that weight. ``twinrank train`` calls it during and after training and keeps
what it finds with the model (``models.evidence``), so search can rerank only where it
helps.

The grid is computed here on score arrays: the match scores of each caption's top-k
images (scored once, through the same reranker call search makes) plus ``w`` times their
cosines, ranked by the harness's own COOP and recall functions. The weights are steps
times the ratio of the two scores' spreads, so the grid covers "match alone" (0) to
"almost the bi-encoder's order" whatever the head's logit range.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from twinrank.captions.data import CaptionedImage
from twinrank.evaluation.encode import EncodedCorpus, encode_corpus
from twinrank.evaluation.harness import HarnessConfig, evaluate_corpus
from twinrank.evaluation.metrics import coop_ranking, topk_indices
from twinrank.evaluation.scoring import (
    CorpusTokens,
    RerankerScorer,
    best_positive_ranks,
    recall_from_ranks,
    t2i_positive,
)
from twinrank.models import TwinModel
from twinrank.models.evidence import Evidence, write_evidence
from twinrank.rerank.fused import FusedReranker

WEIGHT_STEPS = (0.0, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
_ROWS = 1024


@dataclass(frozen=True)
class ValidationConfig:
    ks: tuple[int, ...] = (5, 20)  # COOP@k: the bi-encoder's top k reranked
    recall_ks: tuple[int, ...] = (1, 5, 10)
    weight_steps: tuple[float, ...] = WEIGHT_STEPS  # times the spread ratio of match and bi
    rerank: bool = True  # False: the model has no reranker to measure (a bi-only run)
    precision: str = "auto"
    batch_size: int = 64

    def __post_init__(self) -> None:
        if not self.ks or min(self.ks) < 1 or not self.recall_ks or min(self.recall_ks) < 1:
            raise ValueError(f"k values must be positive, got ks {self.ks}")
        if not self.weight_steps or min(self.weight_steps) < 0:
            raise ValueError(f"weight steps must be >= 0, got {self.weight_steps}")


@dataclass(frozen=True)
class ValidationFigures:
    """What one measurement found; ``figures["coop@k"]`` are at ``bi_weight``.

    ``score`` ranks checkpoints: the mean t2i R@1/5/10 of the order search would show
    (the best COOP@k at ``bi_weight`` when ``reranker_gain`` > 0, else the bi-encoder's).
    """

    figures: dict[str, dict[str, float]]
    bi_weight: float | None  # None: no reranker was measured
    reranker_gain: float | None  # best COOP@k t2i R@1 - bi-encoder t2i R@1, in points
    score: float
    weight_grid: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    match_only: dict[str, dict[str, float]] = field(default_factory=dict)  # w = 0, both ways
    images: int = 0
    captions: int = 0


class _RememberingScorer:
    """A ``PairScoring`` that scores each (caption, image) pair once: the harness's COOP
    pass scores every caption's top-k, and the weight grid then reads the same scores."""

    def __init__(self, inner: RerankerScorer, n_images: int) -> None:
        self.inner = inner
        self.batch_size = inner.batch_size
        self.pairs_scored = 0
        self._n_images = n_images
        self._memory: dict[int, float] = {}

    def score(self, text_ids: np.ndarray, image_ids: np.ndarray) -> np.ndarray:
        text_ids = np.asarray(text_ids, dtype=np.int64)
        image_ids = np.asarray(image_ids, dtype=np.int64)
        keys = (text_ids * self._n_images + image_ids).tolist()
        missing = np.array([j for j, key in enumerate(keys) if key not in self._memory],
                           dtype=np.int64)
        if missing.size:
            values = self.inner.score(text_ids[missing], image_ids[missing])
            self._memory.update(zip((keys[j] for j in missing.tolist()), values.tolist(),
                                    strict=True))
        self.pairs_scored += len(keys)
        return np.array([self._memory[key] for key in keys], dtype=np.float32)

    def score_query(self, text_id: int, image_ids: np.ndarray) -> np.ndarray:
        image_ids = np.asarray(image_ids, dtype=np.int64)
        return self.score(np.full(image_ids.size, text_id, dtype=np.int64), image_ids)


def weight_grid(bi: np.ndarray, match_top: np.ndarray, text_to_image: np.ndarray,
                ks: Sequence[int], weights: Sequence[float],
                recall_ks: Sequence[int] = (1, 5, 10)) -> dict[float, dict[str, dict[str, float]]]:
    """t2i recall of COOP@k under ``match + w * bi`` for every ``w`` and ``k``.

    ``bi`` (M, N) are the captions' cosines to every image; ``match_top`` (M, K) the
    match scores of each caption's top-K images in the bi-encoder's order (K >= max k,
    or all N images when fewer).

    >>> bi = np.array([[0.9, 0.8, 0.1], [0.7, 0.9, 0.2]])  # both captions show image 0
    >>> match = np.array([[0.0, 1.0, 5.0], [0.0, 3.0, 0.0]])  # in each row's bi order
    >>> grid = weight_grid(bi, match, np.array([0, 0]), [2], [0.0, 12.0, 20.0], [1])
    >>> [grid[w]["coop@2"]["t2i_recall@1"] for w in (0.0, 12.0, 20.0)]
    [50.0, 100.0, 50.0]
    """
    top = topk_indices(bi, match_top.shape[1])  # (M, K) the candidates match_top scores
    bi_top = np.take_along_axis(bi, top, axis=1)
    ranks = {(w, k): np.empty(bi.shape[0], dtype=np.int64) for w in weights for k in ks}
    for start in range(0, bi.shape[0], _ROWS):
        rows = np.arange(start, min(start + _ROWS, bi.shape[0]))
        positive = t2i_positive(rows, text_to_image, bi.shape[1])
        for (w, k), out in ranks.items():
            width = min(k, top.shape[1])
            blended = match_top[rows, :width] + w * bi_top[rows, :width]
            out[rows] = best_positive_ranks(coop_ranking(bi[rows], blended, width), positive)
    grid: dict[float, dict[str, dict[str, float]]] = {w: {} for w in weights}
    for (w, k), found in ranks.items():
        grid[w][f"coop@{k}"] = recall_from_ranks(found, tuple(recall_ks), "t2i")
    return grid


def scaled_weights(match_top: np.ndarray, bi_top: np.ndarray,
                   steps: Sequence[float] = WEIGHT_STEPS) -> list[float]:
    """``steps`` times std(match) / std(bi) over the scored candidates, 3 significant
    digits: the grid spans the head's logit range, whatever it is.

    >>> scaled_weights(np.array([[4.0, 0.0]]), np.array([[0.6, 0.4]]), (0.0, 1.0, 2.0))
    [0.0, 20.0, 40.0]
    """
    spread_bi = float(np.std(bi_top))
    ratio = float(np.std(match_top)) / spread_bi if spread_bi > 0 else 1.0
    ratio = ratio if math.isfinite(ratio) and ratio > 0 else 1.0
    return sorted({float(f"{step * ratio:.3g}") for step in steps})


def _mean(metrics: dict[str, float], recall_ks: Sequence[int]) -> float:
    return float(np.mean([metrics[f"t2i_recall@{k}"] for k in recall_ks]))


def _choose(grid: dict[float, dict[str, dict[str, float]]],
            recall_ks: Sequence[int]) -> tuple[float, str]:
    """The weight (and the k) with the best t2i R@1; ties go to the better mean recall,
    then to the smaller weight."""
    def merit(item: tuple[float, str]) -> tuple[float, float, float]:
        w, ranking = item
        metrics = grid[w][ranking]
        return metrics["t2i_recall@1"], _mean(metrics, recall_ks), -w
    return max(((w, ranking) for w in grid for ranking in grid[w]), key=merit)


def measure_validation(model: TwinModel, records: Sequence[CaptionedImage],
                       config: ValidationConfig | None = None) -> ValidationFigures:
    """Bi-encoder and COOP@k recall on ``records``, the blend weight and the gain.

    The model's cross-encoder is used even when its folder does not yet say it is
    trained: this is the measurement that decides whether it may rerank.

    >>> val = load_dataset("data/openclipart/val.jsonl")  # doctest: +SKIP
    >>> found = measure_validation(model, val)  # doctest: +SKIP
    >>> found.bi_weight, found.reranker_gain  # doctest: +SKIP
    (3.1, 1.4)
    """
    config = config or ValidationConfig()
    corpus = encode_corpus(model, records, config.batch_size, config.precision)
    harness = HarnessConfig(modes=("bi", "coop") if config.rerank else ("bi",),
                            ks=config.ks, recall_ks=config.recall_ks, bi_weight=0.0,
                            latency_queries=0, precision=config.precision)
    if not config.rerank:
        table = evaluate_corpus(model, corpus, harness).tables["all"]
        return ValidationFigures({"bi": table["bi"]}, None, None,
                                 _mean(table["bi"], config.recall_ks),
                                 images=corpus.n_images, captions=corpus.n_texts)
    reranker = FusedReranker(model, CorpusTokens(corpus), config.precision, allow_untrained=True)
    scorer = _RememberingScorer(RerankerScorer(reranker, corpus, model.model_id),
                                corpus.n_images)
    table = evaluate_corpus(model, corpus, harness, scorer).tables["all"]
    return _blend(corpus, scorer, table, config)


def _blend(corpus: EncodedCorpus, scorer: _RememberingScorer,
           table: dict[str, dict[str, float]], config: ValidationConfig) -> ValidationFigures:
    bi = corpus.bi_scores()  # (M, N)
    top = topk_indices(bi, max(config.ks))  # (M, K): what the harness's COOP pass scored
    texts = np.repeat(np.arange(corpus.n_texts), top.shape[1])
    match_top = scorer.score(texts, top.ravel()).reshape(top.shape).astype(np.float64)
    weights = scaled_weights(match_top, np.take_along_axis(bi, top, axis=1),
                             config.weight_steps)
    grid = weight_grid(bi, match_top, corpus.text_to_image, config.ks, weights,
                       config.recall_ks)
    weight, best = _choose(grid, config.recall_ks)
    gain = grid[weight][best]["t2i_recall@1"] - table["bi"]["t2i_recall@1"]
    shown = grid[weight][best] if gain > 0 else table["bi"]
    return ValidationFigures(
        figures={"bi": table["bi"], **grid[weight]}, bi_weight=weight, reranker_gain=gain,
        score=_mean(shown, config.recall_ks),
        weight_grid={f"{w:g}": rankings for w, rankings in grid.items()},
        match_only={ranking: metrics for ranking, metrics in table.items()
                    if ranking.startswith("coop@")},
        images=corpus.n_images, captions=corpus.n_texts)


def record_evidence(model: TwinModel, folder: Path, records: Sequence[CaptionedImage],
                    measured_on: str, config: ValidationConfig | None = None) -> Evidence:
    """Measure ``model`` (loaded from ``folder``) on held-out ``records`` and write the
    evidence into the folder (``twinrank evaluate --record``): how a model trained before
    evidence existed earns its place as a default reranker.

    >>> record_evidence(model, Path("models/demo"), load_dataset(spec), spec)  # doctest: +SKIP
    """
    found = measure_validation(model, records, config)
    evidence = Evidence(found.bi_weight or 0.0, found.reranker_gain, found.figures,
                        measured_on)
    write_evidence(folder, evidence, selection="twinrank evaluate --record",
                   score=found.score, images=found.images, captions=found.captions,
                   weight_grid=found.weight_grid, match_only=found.match_only)
    return evidence


__all__ = ["ValidationConfig", "ValidationFigures", "WEIGHT_STEPS", "measure_validation",
           "record_evidence", "scaled_weights", "weight_grid"]

"""The evaluation harness: Recall@K of bi-encoder, cross-encoder and retrieve-and-rerank.

One encoded corpus, three ways of ranking it, both directions:

- ``bi``: cosine of caption and image vectors (every caption x every image);
- ``cross-all``: the fusion head over every pair (guarded: it grows with corpus x queries);
- ``coop@k``: the bi-encoder's top-k per query reranked by the same head over the same
  cached tokens (text->image: per caption, its top-k images; image->text: per image, its
  top-k captions); with ``bi_weight`` > 0 both stages' scores are blended.

``positives="own"`` is the literature's protocol: a caption's right answer is its own image.
``"all-true"`` also counts the images the dataset lists as just as true of it
(``EncodedCorpus.also_true``; ECCV Caption's extra positives for MSCOCO, or synthetic
scenes whose captions hold for more than one picture), in both directions.

Ranks are kept per query, so any subset of queries can be scored afterwards: when the
cross-encoder runs on a random sample of queries (all pairs for each), every mode is also
reported on that same sample (table ``"ce_subset"``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from twinrank.evaluation.encode import EncodedCorpus
from twinrank.evaluation.latency import SEARCH_BACKENDS, LatencyPlan, measure_latency
from twinrank.evaluation.metrics import (
    DEFAULT_KS,
    combine_scores,
    coop_ranking,
    i2t_ranks,
    t2i_ranks,
    topk_indices,
)
from twinrank.evaluation.scoring import (
    CorpusTokens,
    PairScoring,
    RerankerScorer,
    best_positive_ranks,
    i2t_positive,
    recall_from_ranks,
    t2i_positive,
)
from twinrank.models import TwinModel
from twinrank.rerank.registry import blend_weight, make_reranker

MODES = ("bi", "cross-all", "coop")
POSITIVES = ("own", "all-true")
DEFAULT_SWEEP = (5, 10, 20, 50, 100)
DEFAULT_CE_ALL_LIMIT = 2_000_000
_ROW_CHUNK = 1024


@dataclass(frozen=True)
class HarnessConfig:
    """How to evaluate one corpus; the CLI's options end up here."""

    modes: tuple[str, ...] = MODES
    ks: tuple[int, ...] = DEFAULT_SWEEP
    recall_ks: tuple[int, ...] = DEFAULT_KS
    bi_weight: float | None = None  # None: the reranker's own (``rerank_bi_weight``)
    ce_all_limit: int = DEFAULT_CE_ALL_LIMIT
    allow_ce_all: bool = False
    query_sample: int | None = None  # evaluate a random sample of queries per direction
    ce_queries: int | None = None  # CE-all on a sample of the captions; None = all of them
    ce_image_queries: int | None = None  # ... and of the images (0: none); None = ce_queries
    batch_size: int = 512  # pairs per fusion-head forward
    latency_queries: int = 30  # queries timed per stage; 0 skips latency
    ce_latency_queries: int = 5  # of those, how many also time CE over all images
    warmup: int = 3
    search_backend: str = "numpy"  # or "qdrant-edge"
    seed: int = 0
    precision: str = "auto"
    positives: str = "own"  # or "all-true": also the corpus's also_true pairs
    reranker: str = "fused"  # any registered reranker (rerank.registry)

    def latency_plan(self) -> LatencyPlan:
        return LatencyPlan(tuple(sorted(set(self.ks))), self.latency_queries,
                           self.ce_latency_queries, self.warmup, self.search_backend,
                           self.seed, self.precision)

    def __post_init__(self) -> None:
        unknown = [mode for mode in self.modes if mode not in MODES]
        if unknown or not self.modes:
            raise ValueError(f"unknown mode(s) {unknown}; choose from {', '.join(MODES)}")
        if not self.ks or min(self.ks) < 1 or not self.recall_ks or min(self.recall_ks) < 1:
            raise ValueError(f"k values must be positive, got sweep {self.ks}")
        if self.positives not in POSITIVES:
            raise ValueError(f"unknown positives {self.positives!r}; use one of "
                             f"{', '.join(POSITIVES)}")
        if self.bi_weight is not None and not self.bi_weight >= 0.0:
            raise ValueError(f"bi_weight must be a number >= 0, got {self.bi_weight}")
        for name in ("query_sample", "ce_queries", "ce_image_queries"):
            value = getattr(self, name)
            if value is not None and value < (0 if name == "ce_image_queries" else 1):
                raise ValueError(f"{name} must be at least 1, got {value}")

    @property
    def ce_i2t_queries(self) -> int | None:
        return self.ce_queries if self.ce_image_queries is None else self.ce_image_queries
        if self.search_backend not in SEARCH_BACKENDS:
            raise ValueError(f"unknown search backend {self.search_backend!r}; use one of "
                             f"{', '.join(SEARCH_BACKENDS)}")


@dataclass
class CorpusResult:
    """Recall tables, the COOP sweep, latency and facts about one evaluated corpus."""

    tables: dict[str, dict[str, dict[str, float]]]  # {"all" | "ce_subset": {mode: metrics}}
    sweep: dict[int, dict[str, float]]  # {k: coop@k metrics + costs}
    latency: dict[str, Any]
    info: dict[str, Any]


@dataclass
class _Ranks:
    t2i: np.ndarray  # (M,) rank per caption, -1 where not evaluated
    i2t: np.ndarray  # (N,) rank per image, -1 where not evaluated or without captions


def ce_all_pairs(n_t2i_queries: int, n_images: int, n_i2t_queries: int, n_texts: int,
                 limit: int, force: bool) -> int:
    """Pairs the cross-encoder over all pairs will score; refuse above ``limit`` unless forced.

    >>> ce_all_pairs(10, 100, 5, 30, limit=10_000, force=False)
    1150
    """
    pairs = n_t2i_queries * n_images + n_i2t_queries * n_texts
    if pairs > limit and not force:
        raise ValueError(
            f"cross-encoder over all pairs would score {pairs} pairs ({n_t2i_queries} captions "
            f"x {n_images} images + {n_i2t_queries} images x {n_texts} captions), above the "
            f"limit {limit}; pass --allow-ce-all, raise --ce-all-limit, sample queries with "
            "--ce-queries, or use retrieve-and-rerank (coop)")
    return pairs


def planned_ce_pairs(config: HarnessConfig, n_texts: int, n_images: int,
                     n_captioned_images: int) -> int:
    """Check the CE-all guard from corpus sizes alone, before anything is encoded."""
    if "cross-all" not in config.modes:
        return 0

    def cap(count: int, *limits: int | None) -> int:
        return min([count, *(limit for limit in limits if limit is not None)])

    t2i = cap(n_texts, config.query_sample, config.ce_queries)
    i2t = cap(n_captioned_images, config.query_sample, config.ce_i2t_queries)
    return ce_all_pairs(t2i, n_images, i2t, n_texts, config.ce_all_limit, config.allow_ce_all)


def _recalls(ranks: _Ranks, ks: tuple[int, ...], t2i_rows: np.ndarray,
             i2t_rows: np.ndarray) -> dict[str, float]:
    metrics = (recall_from_ranks(ranks.t2i[t2i_rows], ks, "t2i")
               | recall_from_ranks(ranks.i2t[i2t_rows], ks, "i2t"))
    values = [value for value in metrics.values() if np.isfinite(value)]
    metrics["mean_recall"] = float(np.mean(values)) if values else float("nan")
    return metrics


def _coop_rows(first: np.ndarray, top: np.ndarray, rerank: np.ndarray, k: int,
               bi_weight: float, positive: np.ndarray) -> np.ndarray:
    """Ranks of one block of queries under COOP@k (first-stage rows, their top, rerank)."""
    second = rerank[:, :k]
    if bi_weight > 0:
        bi_top = np.take_along_axis(first, top[:, :k], axis=1)
        second = combine_scores(second, bi_top, bi_weight)
    return best_positive_ranks(coop_ranking(first, second, k), positive)


def _positive(rows: np.ndarray, t2i: bool, text_to_image: np.ndarray, n_candidates: int,
              also_true: np.ndarray | None) -> np.ndarray:
    return (t2i_positive(rows, text_to_image, n_candidates, also_true) if t2i
            else i2t_positive(rows, text_to_image, also_true))


def _coop_direction(scorer: PairScoring, first: np.ndarray, queries: np.ndarray,
                    k_max: int, ks: tuple[int, ...], config: HarnessConfig,
                    t2i: bool, text_to_image: np.ndarray,
                    also_true: np.ndarray | None) -> dict[int, np.ndarray]:
    """COOP ranks of ``queries`` (rows of ``first``) at each k, one rerank pass at k_max."""
    out = {k: np.empty(queries.size, dtype=np.int64) for k in ks}
    for start in range(0, queries.size, _ROW_CHUNK):
        rows = queries[start : start + _ROW_CHUNK]
        block = first[rows]
        top = topk_indices(block, k_max)  # (rows, k_max) candidates, best first
        query_ids = np.repeat(rows, top.shape[1])
        text_ids, image_ids = (query_ids, top.ravel()) if t2i else (top.ravel(), query_ids)
        rerank = scorer.score(text_ids, image_ids).reshape(top.shape)
        positive = _positive(rows, t2i, text_to_image, first.shape[1], also_true)
        for k in ks:
            out[k][start : start + rows.size] = _coop_rows(
                block, top, rerank, k, config.bi_weight or 0.0, positive)
    return out


def _cross_all_direction(scorer: PairScoring, queries: np.ndarray, n_candidates: int,
                         t2i: bool, text_to_image: np.ndarray,
                         also_true: np.ndarray | None) -> np.ndarray:
    ranks = np.empty(queries.size, dtype=np.int64)
    candidates = np.arange(n_candidates)
    rows_per_chunk = max(1, scorer.batch_size * 8 // max(n_candidates, 1))
    for start in range(0, queries.size, rows_per_chunk):
        rows = queries[start : start + rows_per_chunk]
        query_ids = np.repeat(rows, n_candidates)
        other = np.tile(candidates, rows.size)
        scores = (scorer.score(query_ids, other) if t2i
                  else scorer.score(other, query_ids)).reshape(rows.size, n_candidates)
        positive = _positive(rows, t2i, text_to_image, n_candidates, also_true)
        ranks[start : start + rows.size] = best_positive_ranks(scores, positive)
    return ranks


def _sample(ids: np.ndarray, count: int | None, rng: np.random.Generator) -> np.ndarray:
    if count is None or count >= ids.size:
        return ids
    return np.sort(rng.choice(ids, size=count, replace=False))


def _coop_ranks(scorer: PairScoring, corpus: EncodedCorpus, bi: np.ndarray,
                texts: np.ndarray, images: np.ndarray, config: HarnessConfig,
                also_true: np.ndarray | None) -> dict[str, _Ranks]:
    """COOP@k ranks for every k of the sweep, both directions, from one rerank at max k."""
    ks = tuple(sorted(set(config.ks)))
    tti = corpus.text_to_image
    t2i = _coop_direction(scorer, bi, texts, max(ks), ks, config, True, tti, also_true)
    i2t = _coop_direction(scorer, bi.T, images, max(ks), ks, config, False, tti, also_true)
    ranks: dict[str, _Ranks] = {}
    for k in ks:
        ranks[f"coop@{k}"] = _Ranks(np.full(corpus.n_texts, -1), np.full(corpus.n_images, -1))
        ranks[f"coop@{k}"].t2i[texts] = t2i[k]
        ranks[f"coop@{k}"].i2t[images] = i2t[k]
    return ranks


def _cross_all_ranks(scorer: PairScoring, corpus: EncodedCorpus, texts: np.ndarray,
                     images: np.ndarray, also_true: np.ndarray | None) -> _Ranks:
    tti = corpus.text_to_image
    ranks = _Ranks(np.full(corpus.n_texts, -1), np.full(corpus.n_images, -1))
    ranks.t2i[texts] = _cross_all_direction(scorer, texts, corpus.n_images, True, tti,
                                            also_true)
    ranks.i2t[images] = _cross_all_direction(scorer, images, corpus.n_texts, False, tti,
                                             also_true)
    return ranks


def _bi_ranks(bi: np.ndarray, tti: np.ndarray, also_true: np.ndarray | None) -> _Ranks:
    """The bi-encoder's ranks over every caption and image (its scores cover all pairs)."""
    if also_true is None or not len(also_true):
        return _Ranks(t2i_ranks(bi, tti), i2t_ranks(bi, tti))
    ranks = _Ranks(np.empty(bi.shape[0], dtype=np.int64), np.empty(bi.shape[1], dtype=np.int64))
    for t2i, scores, out in ((True, bi, ranks.t2i), (False, bi.T, ranks.i2t)):
        for start in range(0, scores.shape[0], _ROW_CHUNK):
            rows = np.arange(start, min(start + _ROW_CHUNK, scores.shape[0]))
            out[rows] = best_positive_ranks(
                scores[rows], _positive(rows, t2i, tti, scores.shape[1], also_true))
    return ranks


def make_scorer(model: TwinModel, corpus: EncodedCorpus, config: HarnessConfig) -> RerankerScorer:
    """The cross-encoder stage for ``config.reranker``, as search would build it."""
    reranker = make_reranker(config.reranker, model, CorpusTokens(corpus),
                             str(model.device), config.precision)
    if reranker is None:
        raise ValueError(f"--reranker {config.reranker} scores nothing; evaluate with "
                         f"--modes bi, or name a reranker (fused, blip-itm).")
    return RerankerScorer(reranker, corpus, model.model_id, config.batch_size)


def evaluate_corpus(model: TwinModel, corpus: EncodedCorpus,
                    config: HarnessConfig | None = None,
                    scorer: PairScoring | None = None) -> CorpusResult:
    """Every requested mode on one corpus: recall tables, COOP sweep, latency.

    ``scorer`` defaults to the reranker ``config.reranker`` names, built by the registry
    on ``model`` and the corpus's cached tokens (``make_scorer``); tests pass a fake.

    >>> result = evaluate_corpus(model, encode_corpus(model, records))  # doctest: +SKIP
    >>> result.tables["all"]["coop@20"]["t2i_recall@1"]  # doctest: +SKIP
    61.3
    """
    config = config if config is not None else HarnessConfig()
    rng = np.random.default_rng(config.seed)
    bi = corpus.bi_scores()  # (M, N)
    tti = corpus.text_to_image
    texts = _sample(np.arange(corpus.n_texts), config.query_sample, rng)  # t2i queries
    images = _sample(np.unique(tti), config.query_sample, rng)  # i2t queries: captioned images
    also_true = corpus.also_true if config.positives == "all-true" else None
    info: dict[str, Any] = {"n_images": corpus.n_images, "n_texts": corpus.n_texts,
                            "n_text_queries": int(texts.size),
                            "n_image_queries": int(images.size),
                            "positives": config.positives,
                            "also_true_pairs": 0 if also_true is None else len(also_true)}
    ce_texts, ce_images = texts, images
    if "cross-all" in config.modes:  # refuse before any work is done
        ce_texts = _sample(texts, config.ce_queries, rng)
        ce_images = _sample(images, config.ce_i2t_queries, rng)
        info["ce_all_pairs"] = ce_all_pairs(ce_texts.size, corpus.n_images, ce_images.size,
                                            corpus.n_texts, config.ce_all_limit,
                                            config.allow_ce_all)
    if scorer is None and ("coop" in config.modes or "cross-all" in config.modes):
        scorer = make_scorer(model, corpus, config)
    if config.bi_weight is None:  # the reranker's own recipe, as search uses it
        config = replace(config, bi_weight=blend_weight(
            scorer.reranker if isinstance(scorer, RerankerScorer) else None, model))
    info["bi_weight"] = config.bi_weight
    ranks = {"bi": _bi_ranks(bi, tti, also_true)}
    if "coop" in config.modes:
        assert scorer is not None
        ranks.update(_coop_ranks(scorer, corpus, bi, texts, images, config, also_true))
        info["coop_pairs_scored"] = scorer.pairs_scored
    if "cross-all" in config.modes:
        assert scorer is not None
        ranks["cross-all"] = _cross_all_ranks(scorer, corpus, ce_texts, ce_images, also_true)
        info.update(ce_t2i_queries=int(ce_texts.size), ce_i2t_queries=int(ce_images.size))
    sampled = ce_texts.size < texts.size or ce_images.size < images.size
    tables = {"all": {mode: _recalls(r, config.recall_ks, texts, images)
                      for mode, r in ranks.items() if not (mode == "cross-all" and sampled)}}
    if "cross-all" in ranks and sampled:
        tables["ce_subset"] = {mode: _recalls(r, config.recall_ks, ce_texts, ce_images)
                               for mode, r in ranks.items()}
    latency = (measure_latency(model, corpus, scorer, config.latency_plan(),
                               with_ce_all="cross-all" in config.modes)
               if config.latency_queries > 0 and scorer is not None else {})
    ks = tuple(sorted(set(config.ks)))
    return CorpusResult(tables, _sweep(tables["all"], latency, ks), latency, info)


def _sweep(table: dict[str, dict[str, float]], latency: dict[str, Any],
           ks: tuple[int, ...]) -> dict[int, dict[str, float]]:
    costs = latency.get("modes", {}) if latency else {}
    return {k: {**table[f"coop@{k}"], **costs.get(f"coop@{k}", {})}
            for k in ks if f"coop@{k}" in table}


def _mean_nested(values: list[Any]) -> Any:
    first = values[0]
    if isinstance(first, dict):
        return {key: _mean_nested([v[key] for v in values if key in v]) for key in first}
    if isinstance(first, int | float) and not isinstance(first, bool):
        return float(np.mean(values))
    return first


def evaluate_folds(model: TwinModel, corpus: EncodedCorpus, folds: int,
                   config: HarnessConfig | None = None) -> CorpusResult:
    """Mean over ``folds`` consecutive, equal image folds, each its own corpus (COCO 1k).

    Every mode, COOP's top-k included, is recomputed inside each fold: a 1k fold is a
    smaller corpus, not a slice of the 5k rankings.
    """
    if folds < 1 or corpus.n_images % folds:
        raise ValueError(f"{corpus.n_images} images do not split into {folds} equal folds")
    size = corpus.n_images // folds
    parts = [evaluate_corpus(model, corpus.select_images(range(f * size, (f + 1) * size)),
                             config) for f in range(folds)]
    result = CorpusResult(
        tables=_mean_nested([p.tables for p in parts]),
        sweep=_mean_nested([p.sweep for p in parts]),
        latency=_mean_nested([p.latency for p in parts]) if parts[0].latency else {},
        info=_mean_nested([p.info for p in parts]),
    )
    result.info.update(folds=folds, fold_size=size)
    return result


__all__ = ["CorpusResult", "DEFAULT_CE_ALL_LIMIT", "DEFAULT_SWEEP", "HarnessConfig", "MODES",
           "ce_all_pairs", "evaluate_corpus", "evaluate_folds", "planned_ce_pairs"]

"""Per-query latency of each retrieval stage, and the total cost of each mode.

Stages, timed one query at a time after a warm-up: ``text_encode`` (tokenize + text tower,
which gives the query vector and its token states), ``vector_search`` (the top-k images by
cosine, from an exact numpy search or a real Qdrant Edge store), ``rerank@k`` (the fusion
head over k cached token sets) and ``ce_all`` (the same head over every image). Modes add
up stages: bi = text + search, coop@k = text + search + rerank@k, cross-all = text + ce_all.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from twinrank.evaluation.encode import EncodedCorpus
from twinrank.evaluation.metrics import latency_summary
from twinrank.evaluation.scoring import PairScoring
from twinrank.models import TwinModel
from twinrank.models.device import autocast, inference_dtype

SEARCH_BACKENDS = ("numpy", "qdrant-edge")


class SearchBackend(Protocol):
    """The first stage: indices of the top ``k`` images for a query vector, best first."""

    name: str

    def search(self, vector: np.ndarray, k: int) -> np.ndarray: ...

    def close(self) -> None: ...


class NumpySearch:
    """Exact cosine top-k over the image vectors held in memory."""

    name = "numpy-exact"

    def __init__(self, image_vectors: np.ndarray) -> None:
        self.image_vectors = image_vectors

    def search(self, vector: np.ndarray, k: int) -> np.ndarray:
        scores = self.image_vectors @ vector  # (N,)
        k = min(k, scores.size)
        top = np.argpartition(-scores, k - 1)[:k]
        result: np.ndarray = top[np.argsort(-scores[top], kind="stable")]
        return result

    def close(self) -> None:
        return None


class EdgeSearch:
    """The product's own engine: a temporary Qdrant Edge collection of the image vectors."""

    name = "qdrant-edge"

    def __init__(self, image_vectors: np.ndarray, image_tokens: np.ndarray) -> None:
        from twinrank.store import CollectionInfo, EdgeStore, PointRecord

        self._folder = Path(tempfile.mkdtemp(prefix="twinrank-eval-"))
        info = CollectionInfo(model_id="evaluation", vector_size=int(image_vectors.shape[1]),
                              token_count=int(image_tokens.shape[1]),
                              token_width=int(image_tokens.shape[2]))
        try:
            self.store = EdgeStore.open(self._folder / "store", info)
        except Exception:
            shutil.rmtree(self._folder, ignore_errors=True)
            raise
        self._index: dict[str, int] = {}
        records = []
        for index, vector in enumerate(image_vectors):
            point_id = str(uuid.UUID(int=index + 1))
            self._index[point_id] = index
            records.append(PointRecord(point_id, vector, None, {}))
        for start in range(0, len(records), 1000):
            self.store.upsert(records[start : start + 1000])
        self.store.flush()

    def search(self, vector: np.ndarray, k: int) -> np.ndarray:
        hits = self.store.search(vector, k, modality="text")  # the queries are captions
        return np.array([self._index[hit.id] for hit in hits], dtype=np.int64)

    def close(self) -> None:
        self.store.close()
        shutil.rmtree(self._folder, ignore_errors=True)


def make_search(backend: str, corpus: EncodedCorpus) -> SearchBackend:
    if backend == "numpy":
        return NumpySearch(corpus.image_vectors)
    if backend == "qdrant-edge":
        return EdgeSearch(corpus.image_vectors, corpus.image_tokens)
    raise ValueError(f"unknown search backend {backend!r}; use one of {SEARCH_BACKENDS}")


@dataclass(frozen=True)
class LatencyPlan:
    """Which queries to time and how."""

    ks: tuple[int, ...]
    queries: int = 30
    ce_queries: int = 5  # CE-all is slow: timed on the first few queries only
    warmup: int = 3
    search_backend: str = "numpy"
    seed: int = 0
    precision: str = "auto"


class _Timer:
    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {}

    def add(self, stage: str, started: float) -> None:
        self.samples.setdefault(stage, []).append(time.perf_counter() - started)


@torch.inference_mode()
def _encode_query(model: TwinModel, text: str, dtype: torch.dtype) -> np.ndarray:
    with autocast(model.device, dtype):
        encoded = model.encode_text(model.tokenize([text]))
    vector: np.ndarray = encoded.text_vector[0].float().cpu().numpy()
    return vector


def _time_query(model: TwinModel, corpus: EncodedCorpus, scorer: PairScoring,
                search: SearchBackend, query: int, plan: LatencyPlan, with_ce: bool,
                timer: _Timer) -> np.ndarray:
    dtype = inference_dtype(model.device, plan.precision)
    started = time.perf_counter()
    vector = _encode_query(model, corpus.captions[query], dtype)
    timer.add("text_encode", started)
    started = time.perf_counter()
    top = search.search(vector, max(plan.ks))
    timer.add("vector_search", started)
    for k in plan.ks:
        started = time.perf_counter()
        scorer.score_query(query, top[:k])
        timer.add(f"rerank@{k}", started)
    if with_ce:
        started = time.perf_counter()
        scorer.score_query(query, np.arange(corpus.n_images))
        timer.add("ce_all", started)
    return top


def _mode_costs(samples: dict[str, list[float]], plan: LatencyPlan,
                n_images: int) -> dict[str, dict[str, float]]:
    text = np.array(samples["text_encode"])
    search = np.array(samples["vector_search"])
    modes: dict[str, dict[str, float]] = {
        "bi": {**latency_summary((text + search).tolist(), "total"), "pairs_per_query": 0.0}}
    for k in plan.ks:
        rerank = np.array(samples[f"rerank@{k}"])
        modes[f"coop@{k}"] = {**latency_summary(rerank.tolist(), "rerank"),
                              **latency_summary((text + search + rerank).tolist(), "total"),
                              "pairs_per_query": float(min(k, n_images))}
    if "ce_all" in samples:
        ce = np.array(samples["ce_all"])
        modes["cross-all"] = {**latency_summary(ce.tolist(), "rerank"),
                              **latency_summary((text[: ce.size] + ce).tolist(), "total"),
                              "pairs_per_query": float(n_images)}
        for k in plan.ks:
            cost = modes[f"coop@{k}"]
            cost["rerank_cost_vs_ce_all"] = cost["rerank_ms_mean"] / float(ce.mean() * 1000)
            cost["total_cost_vs_ce_all"] = (cost["total_ms_mean"]
                                            / modes["cross-all"]["total_ms_mean"])
    return modes


def measure_latency(model: TwinModel, corpus: EncodedCorpus, scorer: PairScoring,
                    plan: LatencyPlan, with_ce_all: bool) -> dict[str, object]:
    """Stage timings and per-mode costs in milliseconds per query (p50/p95/mean).

    Why: the point of retrieve-and-rerank is accuracy at a fraction of the cost of a
    cross-encoder over everything; this measures that fraction on the same reranker and
    the same cached tokens, so the ratio reflects only how many pairs each mode scores.
    """
    rng = np.random.default_rng(plan.seed)
    count = min(plan.queries, corpus.n_texts)
    queries = rng.choice(corpus.n_texts, size=count, replace=False)
    search = make_search(plan.search_backend, corpus)
    timer = _Timer()
    agreement: list[float] = []
    try:
        for position, query in enumerate(queries[: plan.warmup]):
            _time_query(model, corpus, scorer, search, int(query), plan,
                        with_ce_all and position == 0, _Timer())
        for position, query in enumerate(queries):
            top = _time_query(model, corpus, scorer, search, int(query), plan,
                              with_ce_all and position < plan.ce_queries, timer)
            exact = NumpySearch(corpus.image_vectors).search(corpus.text_vectors[query], top.size)
            agreement.append(len(set(top.tolist()) & set(exact.tolist())) / max(top.size, 1))
    finally:
        search.close()
    stages = {stage: latency_summary(values) for stage, values in timer.samples.items()}
    return {
        "search_backend": search.name,
        "search_topk_overlap_with_exact": float(np.mean(agreement)),
        "stages": stages,
        "modes": _mode_costs(timer.samples, plan, corpus.n_images),
    }


__all__ = ["LatencyPlan", "NumpySearch", "SEARCH_BACKENDS", "make_search",
           "measure_latency"]

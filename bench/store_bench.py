"""Store benchmark: Qdrant Edge (and qdrant-client local mode) on synthetic CLIP-like data.

    python -m bench.store_bench                      # 10k and 100k points, ~5-8 min
    python -m bench.store_bench --sizes 10000 --queries 50   # a quick look

For each size: upsert rate, HNSW build (``optimize``), query p50/p95 for top-20 with the
default search plan, filtered p50, reopen time, disk size, and recall@20 of the ANN search
against exact search on the same data (numpy ground truth), for *near* queries (held-out
images) and *far* queries (text-like: out of distribution, the modality gap), over a sweep
of ``hnsw_ef``. Exact search on the same store is the baseline every latency is compared
with (the machine is shared; ratios travel better than milliseconds). qdrant-client local
mode runs once, at ``--local-cap`` points, next to Edge on the same data. Results go to
bench/results/store_bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from twinrank.store import EdgeStore, RemoteStore, open_store
from twinrank.store.filters import SearchFilter, ancestor_folders
from twinrank.store.schema import CollectionInfo, PointRecord, SearchPlan, search_plan

K = 20
FILTER = SearchFilter(folder="/photos/3", formats=("jpeg",))  # ~7.5% of the points


@dataclass(frozen=True)
class BenchConfig:
    sizes: tuple[int, ...] = (10_000, 100_000)
    dim: int = 512
    queries: int = 200
    local_cap: int = 2_000  # local mode upserts ~50 points/s here; more does not finish
    local_queries: int = 30
    tokens_only: bool = False
    real_vectors: Path | None = None  # an .npz from bench/demo_text_vectors.py
    efs: tuple[int, ...] = (64, 128, 256, 512, 1024)
    seed: int = 0
    out: Path = Path("bench/results/store_bench.json")
    workdir: Path | None = None


@dataclass
class Corpus:
    """Clustered unit vectors in a narrow cone (as CLIP image embeddings are) + payloads."""

    vectors: np.ndarray  # (N, D) float32
    near: np.ndarray  # (Q, D) held-out images from the same clusters
    far: np.ndarray  # (Q, D) text-like queries: a different cone, weakly tied to clusters
    folder: np.ndarray  # (N,) int, 10 folders
    jpeg: np.ndarray  # (N,) bool
    stats: dict[str, float] = field(default_factory=dict)


def make_corpus(n: int, dim: int, queries: int, seed: int) -> Corpus:
    rng = np.random.default_rng(seed)
    clusters = max(n // 100, 10)
    image_mean, text_mean = _unit(rng.standard_normal((2, dim)))
    centres = _unit(rng.standard_normal((clusters, dim)))

    def images(count: int) -> np.ndarray:
        which = rng.integers(0, clusters, count)
        noise = rng.standard_normal((count, dim)) / np.sqrt(dim)
        return _unit(1.2 * image_mean + centres[which] + 1.1 * noise)

    vectors = images(n)
    near = images(queries)
    which = rng.integers(0, clusters, queries)
    noise = rng.standard_normal((queries, dim)) / np.sqrt(dim)
    far = _unit(0.4 * image_mean + 2.0 * text_mean + 0.45 * centres[which] + noise)
    corpus = Corpus(vectors, near, far, rng.integers(0, 10, n), rng.random(n) < 0.75)
    corpus.stats = {"near_top1_cosine": float(np.mean((near @ vectors.T).max(1))),
                    "far_top1_cosine": float(np.mean((far @ vectors.T).max(1)))}
    return corpus


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def records(corpus: Corpus, start: int, stop: int) -> list[PointRecord]:
    out = []
    for i in range(start, stop):
        path = f"/photos/{corpus.folder[i]}/img{i}.{'jpg' if corpus.jpeg[i] else 'png'}"
        payload = {"paths": [path], "folders": ancestor_folders(path), "size": 1000 + i,
                   "format": "jpeg" if corpus.jpeg[i] else "png",
                   "captured_at": f"{2015 + i % 10}-06-01T00:00:00Z"}
        out.append(PointRecord(str(uuid.UUID(int=i + 1)), corpus.vectors[i], None, payload))
    return out


def truth(corpus: Corpus, queries: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    scores = queries @ corpus.vectors.T  # (Q, N)
    if mask is not None:
        scores[:, ~mask] = -np.inf
    return np.argsort(-scores, axis=1)[:, :K]


def run_queries(store: Any, queries: np.ndarray, search_filter: SearchFilter | None,
                plan: SearchPlan | None) -> tuple[list[list[int]], np.ndarray]:
    ids, times = [], []
    for query in queries:
        started = time.perf_counter()
        hits = store.search(query, K, search_filter, plan=plan)
        times.append((time.perf_counter() - started) * 1000)
        ids.append([uuid.UUID(h.id).int - 1 for h in hits])
    return ids, np.array(times)


def recall(found: list[list[int]], expected: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e)) / K for f, e in zip(found, expected, strict=True)]))


def latency(times: np.ndarray) -> dict[str, float]:
    return {"p50_ms": round(float(np.percentile(times, 50)), 3),
            "p95_ms": round(float(np.percentile(times, 95)), 3)}


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def bench_store(name: str, opener: Callable[[], Any], corpus: Corpus, where: Path,
                efs: tuple[int, ...]) -> dict[str, Any]:
    """Every number for one back end at one size."""
    n = len(corpus.vectors)
    result: dict[str, Any] = {"backend": name, "points": n}
    store = opener()
    started = time.perf_counter()
    for start in range(0, n, 1000):
        store.upsert(records(corpus, start, min(start + 1000, n)))
    store.flush()
    result["upsert_points_per_s"] = round(n / (time.perf_counter() - started))
    if isinstance(store, EdgeStore):
        started = time.perf_counter()
        store.optimize()
        result["optimize_s"] = round(time.perf_counter() - started, 1)
    mask = (corpus.folder == 3) & corpus.jpeg
    expected = {"near": truth(corpus, corpus.near), "far": truth(corpus, corpus.far),
                "filtered": truth(corpus, corpus.far, mask)}
    exact = SearchPlan(exact=True, hnsw_ef=None)
    for label, plan in [("exact", exact), ("default", None)]:
        for kind in ("near", "far"):
            found, times = run_queries(store, getattr(corpus, kind), None, plan)
            result[f"{label}_{kind}"] = {**latency(times),
                                         "recall@20": recall(found, expected[kind])}
        found, times = run_queries(store, corpus.far, FILTER, plan)
        result[f"{label}_filtered"] = {**latency(times),
                                       "recall@20": recall(found, expected["filtered"])}
    result["default_plan"] = asdict(search_plan(n, K))
    if isinstance(store, EdgeStore) and not search_plan(n, K).exact:
        result["ef_sweep"] = ef_sweep(store, corpus, expected, efs)
    store.close()
    started = time.perf_counter()
    store = opener()
    store.search(corpus.near[0], K)
    result["reopen_s"] = round(time.perf_counter() - started, 3)
    store.close()
    result["disk_mb"] = round(disk_bytes(where) / 1e6, 1)
    return result


def ef_sweep(store: EdgeStore, corpus: Corpus, expected: dict[str, np.ndarray],
             efs: tuple[int, ...]) -> list[dict[str, Any]]:
    rows = []
    for ef in efs:
        plan = SearchPlan(exact=False, hnsw_ef=ef)
        row: dict[str, Any] = {"hnsw_ef": ef}
        for kind in ("near", "far"):
            found, times = run_queries(store, getattr(corpus, kind), None, plan)
            row[kind] = {**latency(times), "recall@20": recall(found, expected[kind])}
        rows.append(row)
    return rows


def token_cache(where: Path, tokens: tuple[int, int] = (16, 256), n: int = 4000) -> dict[str, Any]:
    """Bytes per image of the reranker's cached tokens: as stored, and on disk.

    New embedded collections keep them in the side file of ``store.tokens`` (float16 plus a
    64-byte tag per record); results recorded before it measured the shard's multivector,
    whose write-ahead log also held each upsert as float32 until it rotated. Files grow in
    preallocated chunks, so the on-disk delta at a few thousand points is an upper bound.
    """
    rng = np.random.default_rng(0)
    sizes = {}
    for label, with_tokens in [("without_tokens", False), ("with_tokens", True)]:
        folder = where / f"tokens-{label}"
        store = EdgeStore.open(folder, CollectionInfo("bench", 512, tokens[0], tokens[1]))
        for start in range(0, n, 500):
            store.upsert([PointRecord(str(uuid.UUID(int=i + 1)), _unit(rng.standard_normal(512)),
                                      rng.standard_normal(tokens).astype(np.float32)
                                      if with_tokens else None, {})
                          for i in range(start, start + 500)])
        store.optimize()
        store.close()
        sizes[label] = disk_bytes(folder)
        shutil.rmtree(folder, ignore_errors=True)
    return {"token_shape": list(tokens), "dtype": "float16", "points": n,
            "raw_bytes_per_image": tokens[0] * tokens[1] * 2,
            "disk_bytes_per_image_incl_wal": round((sizes["with_tokens"]
                                                    - sizes["without_tokens"]) / n)}


def main(config: BenchConfig) -> dict[str, Any]:
    work = Path(config.workdir or tempfile.mkdtemp(prefix="store_bench-"))
    report: dict[str, Any] = {
        "command": "python -m bench.store_bench " + " ".join(sys.argv[1:]),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        "machine": f"{os.cpu_count()} CPUs, shared with other engineers (measured under load; "
                   f"load average at start {os.getloadavg()[0]:.1f})",
        "results": [],
    }
    if config.real_vectors is not None:
        report["real_text_queries"] = real_text_queries(config.real_vectors, work, config.efs)
        config.out.write_text(json.dumps(report, indent=2))
        return report
    report["token_cache"] = token_cache(work)
    if config.tokens_only:
        config.out.write_text(json.dumps(report, indent=2))
        return report
    info = CollectionInfo("bench", config.dim, 16, 256)
    for n in config.sizes:
        corpus = make_corpus(n, config.dim, config.queries, config.seed)
        edge_dir = work / f"edge-{n}"
        row = bench_store("qdrant-edge", lambda d=edge_dir: open_store(d, info), corpus,
                          edge_dir, config.efs)
        row["queries"] = corpus.stats
        report["results"].append(row)
        print(json.dumps(row), flush=True)
        shutil.rmtree(edge_dir, ignore_errors=True)
    report["results"].extend(local_mode_vs_edge(config, work))
    config.out.parent.mkdir(parents=True, exist_ok=True)
    config.out.write_text(json.dumps(report, indent=2))
    return report


def real_text_queries(npz: Path, work: Path, efs: tuple[int, ...]) -> dict[str, Any]:
    """HNSW recall for a trained model's own text queries over its own image vectors.

    The vectors come from ``bench/demo_text_vectors.py`` (the demo model on generated
    scenes); the store is built at that size and searched with the default policy, exactly,
    and over the ``hnsw_ef`` sweep.
    """
    data = np.load(npz)
    images, texts = _unit(data["images"]), _unit(data["texts"])
    n, dim = images.shape
    corpus = Corpus(images, images[:0], texts, np.zeros(n, dtype=int), np.ones(n, dtype=bool))
    info = CollectionInfo("bench-real", dim, 16, 256)
    store = open_store(work / "real", info)
    for start in range(0, n, 1000):
        store.upsert(records(corpus, start, min(start + 1000, n)))
    started = time.perf_counter()
    store.optimize()
    result: dict[str, Any] = {"points": n, "dim": dim, "queries": len(texts),
                              "optimize_s": round(time.perf_counter() - started, 1),
                              "text_top1_cosine": float(np.mean((texts @ images.T).max(1)))}
    expected = truth(corpus, texts)
    plans = [("exact", SearchPlan(exact=True, hnsw_ef=None)), ("default", None)]
    plans += [(f"hnsw_ef={ef}", SearchPlan(exact=False, hnsw_ef=ef)) for ef in efs]
    for label, plan in plans:
        found, times = run_queries(store, texts, None, plan)
        result[label] = {**latency(times), "recall@20": recall(found, expected)}
    store.close()
    shutil.rmtree(work / "real", ignore_errors=True)
    return result


def local_mode_vs_edge(config: BenchConfig, work: Path) -> list[dict[str, Any]]:
    """qdrant-client local mode (brute force, pickled to SQLite) next to Edge at its cap."""
    n = config.local_cap
    corpus = make_corpus(n, config.dim, config.local_queries, config.seed)
    info = CollectionInfo("bench", config.dim, 16, 256)
    rows = []
    for name, folder, opener in [
        ("qdrant-edge", work / "edge-small", lambda: open_store(work / "edge-small", info)),
        ("qdrant-client-local", work / "local", lambda: RemoteStore.open(f"path:{work / 'local'}",
                                                                         info)),
    ]:
        row = bench_store(name, opener, corpus, folder, config.efs)
        row["queries"] = corpus.stats
        rows.append(row)
        print(json.dumps(row), flush=True)
        shutil.rmtree(folder, ignore_errors=True)
    return rows


def parse(argv: list[str] | None = None) -> BenchConfig:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--local-cap", type=int, default=BenchConfig.local_cap)
    parser.add_argument("--efs", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    parser.add_argument("--out", type=Path, default=BenchConfig.out)
    parser.add_argument("--tokens-only", action="store_true", help="Only the token cache size.")
    parser.add_argument("--real-vectors", type=Path, default=None,
                        help="Only recall for a model's text queries (bench/demo_text_vectors.py).")
    args = parser.parse_args(argv)
    return BenchConfig(sizes=tuple(args.sizes), queries=args.queries, local_cap=args.local_cap,
                       efs=tuple(args.efs), out=args.out, tokens_only=args.tokens_only,
                       real_vectors=args.real_vectors)


if __name__ == "__main__":
    main(parse())

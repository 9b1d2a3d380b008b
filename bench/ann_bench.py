"""Text queries at scale: the two-stage search over ``centred`` against exact and plain HNSW.

    python -m bench.ann_bench --points 100000 --out bench/results/ann_bench_100k.json
    python -m bench.ann_bench --points 1000000 --workdir DIR --keep   # build once, keep it
    python -m bench.ann_bench --points 1000000 --workdir DIR          # query what DIR holds
    python -m bench.ann_bench --real-vectors OUT.npz --out bench/results/ann_bench_real.json
    python -m bench.ann_bench --points 1000000 --ceiling-only   # no index: the best C can do

Synthetic CLIP-like geometry with a modality gap (``bench.ann_corpus``): images in a narrow
clustered cone, text queries in another, best text->image cosine ~0.25. The collection is
built through ``EdgeStore`` (the store computes ``centred`` and the image mean itself);
the shard is created with the product's own ``_edge_config`` plus, by default, scalar int8
quantization on both indexed vectors, so quantized and full-precision search are measured
on one build (``quantization=ignore`` is the product without quantization).

Recall@20 is against numpy ground truth on the same vectors; every latency is a p50 over
the queries, each row after 20 other queries of its kind, untimed (``WARM_UP_QUERIES``),
and the exact scan is measured in the same run (the machine is shared: compare with it,
not across runs). Text and image queries, unfiltered and filtered
(folder 3 and jpeg: ~7.5% of the points). Filtered queries are also walked through the
graph, plainly (``beam_C`` rows) and, with ``--acorn-beams``, with Qdrant's ACORN (each
neighbour that fails the filter has its own neighbours tried); ``--payload-links`` builds
the payload indexes with Qdrant's extra links per indexed value, which such walks use.
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import ann_corpus as corpus
from bench import cpu_name
from twinrank.models.gap import CALIBRATION_CAPTIONS
from twinrank.store.edge import META_FILE, SHARD_DIR, EdgeStore, _edge_config, edge_filter
from twinrank.store.filters import SearchFilter
from twinrank.store.schema import (
    CENTRED_VECTOR,
    IMAGE_VECTOR,
    RESCORED_PER_RESULT,
    CollectionInfo,
    PointRecord,
    SearchPlan,
    centre,
    crosses_gap,
    query_for_centred,
    search_plan,
    two_stage_plan,
)

K = 20
WARM_UP_QUERIES = 20  # untimed, before each row (real vectors: the first measured ones)
FILTER = SearchFilter(folder="/photos/3", formats=("jpeg",))


@dataclass(frozen=True)
class BenchConfig:
    points: int = 100_000
    dim: int = 512
    queries: int = 200
    exact_queries: int = 50  # the exact scan is slow at 1M; its latency from fewer queries
    quantization: str = "int8"  # on both indexed vectors: int8, binary (centred only), none
    candidates: tuple[int, ...] = (100, 200, 400, 800)
    efs: tuple[int, ...] = (128, 512)
    seed: int = 0
    geometry: str = "calibrated"  # bench.ann_corpus.GEOMETRIES
    hnsw_m: int | None = None  # the centred graph's m and ef_construct (None: the product's)
    ef_construct: int | None = None
    ceiling_only: bool = False  # no index: how many candidates the size needs (numpy)
    indexes_after_build: bool = False  # payload indexes after the HNSW build (ingest
    # creates them before it)
    payload_links: bool | tuple[str, ...] = False  # Qdrant's links per value: all, these fields
    acorn_beams: tuple[int, ...] = ()  # filtered two-stage walks with ACORN at these beams
    # How many caption vectors each calibration searches with, in this order; the last one
    # sets the plan the rows measure (ingest: all of CALIBRATION_CAPTIONS).
    calibration_sizes: tuple[int, ...] = (len(CALIBRATION_CAPTIONS),)
    workdir: Path | None = None
    keep: bool = False
    real_vectors: Path | None = None
    out: Path = Path("bench/results/ann_bench.json")


def vector_params(old: Any, **changes: Any) -> Any:
    """Qdrant Edge's ``EdgeVectorParams`` ``old`` with ``changes`` (its size, distance,
    datatype, quantization and graph otherwise kept)."""
    from qdrant_edge import EdgeVectorParams

    kept = {"size": old.size, "distance": old.distance, "datatype": old.datatype,
            "quantization_config": old.quantization_config, "hnsw_config": old.hnsw_config}
    return EdgeVectorParams(**{**kept, **changes})


def shard_config(info: CollectionInfo, quantization: str, hnsw_m: int | None = None,
                 ef_construct: int | None = None) -> Any:
    """The product's Edge config, with quantization added to the indexed vectors (and the
    centred graph's ``m`` and ``ef_construct`` changed, when given)."""
    from qdrant_edge import (
        BinaryQuantizationConfig,
        EdgeConfig,
        HnswIndexConfig,
        ScalarQuantizationConfig,
        ScalarType,
    )

    config = _edge_config(info)
    vectors = dict(config.vectors)
    if (hnsw_m is not None or ef_construct) and CENTRED_VECTOR in vectors:
        vectors[CENTRED_VECTOR] = vector_params(
            vectors[CENTRED_VECTOR],
            hnsw_config=HnswIndexConfig(m=16 if hnsw_m is None else hnsw_m,
                                        ef_construct=ef_construct or 100,
                                        full_scan_threshold=10_000))
        config = EdgeConfig(vectors=vectors)
    if quantization == "none":
        return config
    int8 = ScalarQuantizationConfig(ScalarType.Int8, quantile=0.99)
    for name in (IMAGE_VECTOR, CENTRED_VECTOR):
        if name not in vectors:
            continue
        chosen = int8 if quantization == "int8" or name == IMAGE_VECTOR else (
            BinaryQuantizationConfig())
        vectors[name] = vector_params(vectors[name], quantization_config=chosen)
    return EdgeConfig(vectors=vectors)


@dataclass
class Source:
    """The vectors one run indexes and queries (synthetic, or a trained model's)."""

    points: int
    chunks: Any  # () -> iterator of (start, (chunk, D) float32 image vectors)
    queries: dict[str, np.ndarray]  # "text" / "image" -> (Q, D)
    text_mean: np.ndarray  # the model's mean text vector
    generic: np.ndarray  # the model's vectors of generic captions: what ingest measures with
    truth: Any  # (queries, mask or None) -> (Q, K) indices of the exact top-k
    warm: dict[str, np.ndarray]  # "text" / "image" -> untimed queries run before each row


def synthetic_source(config: BenchConfig) -> Source:
    geo = corpus.geometry(config.points, config.dim, config.seed, config.geometry)
    generic = corpus.generic_captions(geo)
    return Source(
        config.points, lambda: corpus.image_chunks(geo, config.points, config.seed),
        {"text": corpus.text_queries(geo, config.queries, config.seed),
         "image": corpus.image_queries(geo, config.queries, config.seed)},
        generic.mean(0), generic,
        lambda q, mask: corpus.exact_top_k(geo, config.points, config.seed, q, K, mask)[0],
        corpus.warm_up_queries(geo, WARM_UP_QUERIES, config.seed))


def real_source(config: BenchConfig) -> Source:
    """``bench/demo_text_vectors.py`` output: its images (the last ``queries`` held out as
    image queries), its captions' text vectors, and the model's mean text vector."""
    data = np.load(config.real_vectors)  # type: ignore[arg-type]
    everything = corpus.unit(data["images"])
    images, held_out = everything[:-config.queries], everything[-config.queries:]

    def truth(queries: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        scores = queries @ images.T  # (Q, N)
        if mask is not None:
            scores[:, ~mask] = -np.inf
        return np.argsort(-scores, axis=1)[:, :K]

    texts = corpus.unit(data["texts"])  # no generic captions recorded: measure with queries
    return Source(len(images), lambda: iter([(0, images)]), {"text": texts, "image": held_out},
                  np.asarray(data["text_mean"], dtype=np.float32),
                  texts[-len(CALIBRATION_CAPTIONS):], truth,
                  {"text": texts[:WARM_UP_QUERIES], "image": held_out[:WARM_UP_QUERIES]})


def build(config: BenchConfig, folder: Path, info: CollectionInfo,
          source: Source, edge_config: Any = None) -> dict[str, Any]:
    """Create the shard (``edge_config``, else ``shard_config``'s), write every point
    through ``EdgeStore.upsert``, build the index (payload indexes with Qdrant's per-value
    graph links if ``config.payload_links``)."""
    from qdrant_edge import EdgeShard

    folder.mkdir(parents=True, exist_ok=True)
    EdgeShard.create(str(folder / SHARD_DIR), edge_config or shard_config(
        info, config.quantization, config.hnsw_m, config.ef_construct)).close()
    (folder / META_FILE).write_text(json.dumps(asdict(info)))
    store = EdgeStore.open(folder)
    if not config.indexes_after_build:
        store._create_indexes(links=config.payload_links)  # before the build, as ingest
    folders, jpeg = corpus.payload_columns(source.points, config.seed)
    started = time.perf_counter()
    for start, vectors in source.chunks():
        for first in range(0, len(vectors), 1000):
            store.upsert([PointRecord(str(uuid.UUID(int=start + i + 1)), vectors[i], None,
                                      corpus.payload(start + i, int(folders[start + i]),
                                                     bool(jpeg[start + i])))
                          for i in range(first, min(first + 1000, len(vectors)))])
        print(f"upserted {start + len(vectors)}", flush=True)
    store.flush()
    upsert_s = time.perf_counter() - started
    started = time.perf_counter()
    store.optimize()
    optimize_s = time.perf_counter() - started
    started = time.perf_counter()
    if config.indexes_after_build:
        store._create_indexes()
    index_s = time.perf_counter() - started
    store.close()
    when = "after" if config.indexes_after_build else "before"
    return {"upsert_s": round(upsert_s, 1), "optimize_s": round(optimize_s, 1),
            "payload_index_s": round(index_s, 1),
            "payload_indexes": f"created {when} the HNSW build",
            "payload_links": config.payload_links,
            "quantization": config.quantization}


def direct(store: EdgeStore, vector: np.ndarray, using: str, limit: int, ef: int,
           search_filter: SearchFilter | None, quantization: Any) -> list[Any]:
    """One plain HNSW query on ``using`` with explicit quantization parameters."""
    from qdrant_edge import Query, QueryRequest, SearchParams

    request = QueryRequest(limit=limit, query=Query.Nearest(vector.tolist(), using=using),
                           filter=edge_filter(search_filter, store.info.folder_formats),
                           with_payload=False,
                           params=SearchParams(hnsw_ef=ef, quantization=quantization))
    with store._lease.hold() as shard:
        return list(shard.query(request))


def two_stage_direct(store: EdgeStore, vector: np.ndarray, centred: np.ndarray, candidates: int,
                     search_filter: SearchFilter | None, quantization: Any,
                     using: str = CENTRED_VECTOR, beam: int | None = None,
                     acorn: bool = False) -> list[Any]:
    """The store's two-stage request with explicit quantization on the prefetch and exact
    rescoring (``centred`` is the first-stage query, ``vector`` the rescoring one); the
    first stage's beam is ``candidates`` unless given, and walks with ACORN if ``acorn``."""
    from qdrant_edge import (
        AcornSearchParams,
        Prefetch,
        QuantizationSearchParams,
        Query,
        QueryRequest,
        SearchParams,
    )

    condition = edge_filter(search_filter, store.info.folder_formats)
    walk = AcornSearchParams(enable=True, max_selectivity=1.0) if acorn else None
    prefetch = Prefetch(limit=candidates, filter=condition,
                        query=Query.Nearest(centred.tolist(), using=using),
                        params=SearchParams(hnsw_ef=beam or candidates,
                                            quantization=quantization, acorn=walk))
    exact_rescoring = SearchParams(quantization=QuantizationSearchParams(ignore=True))
    request = QueryRequest(limit=K, query=Query.Nearest(vector.tolist(), using=IMAGE_VECTOR),
                           prefetches=[prefetch], filter=condition, with_payload=False,
                           params=exact_rescoring)
    with store._lease.hold() as shard:
        return list(shard.query(request))


def measure(count: int, expected: np.ndarray, search: Any,
            warm: range = range(0)) -> dict[str, float]:
    """Recall@20 and latency of ``search(i)`` over queries ``0..count-1``, after
    ``search(i)`` for each ``i`` in ``warm``, untimed."""
    for i in warm:
        search(i)
    found, times = [], []
    for i in range(count):
        started = time.perf_counter()
        hits = search(i)
        times.append((time.perf_counter() - started) * 1000)
        found.append({uuid.UUID(str(h.id)).int - 1 for h in hits})
    hit = [len(f & set(e.tolist())) / K for f, e in zip(found, expected, strict=False)]
    return {"recall@20": round(float(np.mean(hit)), 4),
            "p50_ms": round(float(np.percentile(times, 50)), 3),
            "p95_ms": round(float(np.percentile(times, 95)), 3)}


def query_all(config: BenchConfig, store: EdgeStore, sets: dict[str, np.ndarray],
              truth: dict[str, np.ndarray], quantized: bool,
              warm: dict[str, np.ndarray]) -> dict[str, Any]:
    """Every search variant, for text and image queries, unfiltered and filtered."""
    from qdrant_edge import QuantizationSearchParams

    n = store.count()
    ignore = QuantizationSearchParams(ignore=True)
    int8_rescore = QuantizationSearchParams(rescore=True, oversampling=4.0)
    quantized_prefetch = QuantizationSearchParams(rescore=False)
    means = {"text": store.info.text_mean, "image": store.info.image_mean}
    variants: dict[str, Any] = {}
    for modality in ("text", "image"):
        for flt in (None, FILTER):
            key = f"{modality}{'' if flt is None else '_filtered'}"
            count = len(sets[modality])  # then the warm-up queries, untimed, run first
            qs, expected = np.concatenate([sets[modality], warm[modality]]), truth[key]
            warm_up = range(count, len(qs))
            # the store's first-stage query (a text vector as it is, an image centred) and
            # the first proposal for text: minus the model's mean text vector
            cq = np.stack([query_for_centred(q, store.info, modality) for q in qs])
            text_centred = centre(qs, np.asarray(means["text"], dtype=np.float32))

            def run(search: Any, queries: int = count, expected: np.ndarray = expected,
                    warm_up: range = warm_up) -> Any:
                return measure(queries, expected, search, warm_up)

            rows: dict[str, Any] = {
                "exact": run(lambda i, qs=qs, f=flt: store.search(
                    qs[i], K, f, plan=SearchPlan(exact=True, hnsw_ef=None)),
                    queries=min(config.exact_queries, count)),
                "policy": run(lambda i, qs=qs, f=flt, m=modality: store.search(
                    qs[i], K, f, modality=m)),
            }
            plan = search_plan(n, K, modality, crosses_gap(store.info), store.info,
                               filtered=flt is not None)
            rows["policy"]["plan"] = asdict(plan)
            if quantized:  # the store's request as it runs on a collection without int8
                rows["policy_full_precision"] = run(
                    lambda i, qs=qs, cq=cq, f=flt, p=plan: (
                        two_stage_direct(store, qs[i], cq[i], p.candidates, f, ignore)
                        if p.candidates else store.search(qs[i], K, f, plan=p) if p.exact
                        else direct(store, qs[i], IMAGE_VECTOR, K, p.hnsw_ef or 0, f, ignore)))
            for ef in config.efs:
                rows[f"image_hnsw_ef{ef}"] = run(lambda i, qs=qs, f=flt, e=ef: direct(
                    store, qs[i], IMAGE_VECTOR, K, e, f, ignore))
                if quantized:
                    rows[f"image_hnsw_ef{ef}_int8_rescore_x4"] = run(
                        lambda i, qs=qs, f=flt, e=ef: direct(
                            store, qs[i], IMAGE_VECTOR, K, e, f, int8_rescore))
            for c in config.candidates:
                # the product's request: a beam of c on centred's int8 copy, its best
                # 10 per result rescored exactly; and the same beam with all c rescored
                rows[f"beam_{c}"] = run(lambda i, qs=qs, f=flt, m=modality, c=c: store.search(
                    qs[i], K, f, plan=two_stage_plan(c, K), modality=m))
                rows[f"beam_{c}_all_rescored"] = run(
                    lambda i, qs=qs, f=flt, m=modality, c=c: store.search(
                        qs[i], K, f, plan=SearchPlan(exact=False, hnsw_ef=c, candidates=c),
                        modality=m))
                rows[f"two_stage_{c}"] = run(lambda i, qs=qs, cq=cq, f=flt, c=c: (
                    two_stage_direct(store, qs[i], cq[i], c, f, ignore)))
                if modality == "text":
                    rows[f"text_mean_centred_{c}"] = run(
                        lambda i, qs=qs, tq=text_centred, f=flt, c=c: two_stage_direct(
                            store, qs[i], tq[i], c, f, ignore))
                if quantized:
                    rows[f"two_stage_{c}_quantized_prefetch"] = run(
                        lambda i, qs=qs, cq=cq, f=flt, c=c: two_stage_direct(
                            store, qs[i], cq[i], c, f, quantized_prefetch))
            for c in config.acorn_beams if flt is not None else ():
                # the product's request under the filter, walked with ACORN (int8 codes)
                rows[f"acorn_{c}"] = run(lambda i, qs=qs, cq=cq, f=flt, c=c: two_stage_direct(
                    store, qs[i], cq[i], min(c, RESCORED_PER_RESULT * K), f, None,
                    beam=c, acorn=True))
            variants[key] = rows
            print(key, json.dumps({k: (v["recall@20"], v["p50_ms"]) for k, v in rows.items()}),
                  flush=True)
    return variants


def ground_truth(config: BenchConfig, source: Source) -> dict[str, np.ndarray]:
    folders, jpeg = corpus.payload_columns(source.points, config.seed)
    mask = (folders == 3) & jpeg
    truth = {}
    for modality, queries in source.queries.items():
        truth[modality] = source.truth(queries, None)
        truth[f"{modality}_filtered"] = source.truth(queries, mask)
    return truth


def _keep_top(scores: np.ndarray, ids: np.ndarray, extra: np.ndarray,
              count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``count`` best columns of ``scores`` per row, with their ids and ``extra``."""
    keep = np.argpartition(-scores, min(count, scores.shape[1] - 1), axis=1)[:, :count]
    return (np.take_along_axis(scores, keep, axis=1), np.take_along_axis(ids, keep, axis=1),
            np.take_along_axis(extra, keep, axis=1))


def candidate_ceiling(config: BenchConfig, source: Source) -> dict[str, Any]:
    """Recall@20 of the two-stage search if its first stage were exact: the exact top-C
    by centred cosine, rescored exactly. HNSW can only lose from here, so this says how
    many candidates a size needs, without building an index. Two passes over the images
    (the mean, then everything else), so it runs at 1M on a busy machine.
    """
    total, count = np.zeros(source.queries["text"].shape[1]), 0
    for _, vectors in source.chunks():
        total += vectors.sum(axis=0, dtype=np.float64)
        count += len(vectors)
    image_mean = (total / count).astype(np.float32)
    texts = source.queries["text"]
    first_stages = {"text_as_is": texts, "text_mean_centred": centre(texts, source.text_mean)}
    folders, jpeg = corpus.payload_columns(source.points, config.seed)
    mask = (folders == 3) & jpeg
    most = max(config.candidates)
    empty = (np.full((len(texts), 0), -np.inf, dtype=np.float32),
             np.zeros((len(texts), 0), dtype=np.int64), np.zeros((len(texts), 0), np.float32))
    kept = {(name, f): empty for name in [*first_stages, "exact"] for f in (False, True)}
    for start, vectors in source.chunks():
        ids = np.broadcast_to(np.arange(start, start + len(vectors)), (len(texts), len(vectors)))
        raw = texts @ vectors.T  # (Q, chunk)
        centred = centre(vectors, image_mean)
        outside = ~mask[start:start + len(vectors)]
        for (name, filtered), (best, best_ids, best_raw) in list(kept.items()):
            scores = raw.copy() if name == "exact" else first_stages[name] @ centred.T
            if filtered:
                scores[:, outside] = -np.inf
            kept[(name, filtered)] = _keep_top(
                np.concatenate([best, scores], axis=1), np.concatenate([best_ids, ids], axis=1),
                np.concatenate([best_raw, raw], axis=1), K if name == "exact" else most)
    out: dict[str, Any] = {"image_mean_points": count}
    for (name, filtered), (best, best_ids, best_raw) in kept.items():
        if name == "exact":
            continue
        expected = kept[("exact", filtered)][1]
        order = np.argsort(-best, axis=1)
        ids_sorted = np.take_along_axis(best_ids, order, axis=1)
        raw_sorted = np.take_along_axis(best_raw, order, axis=1)
        raw_sorted[np.isneginf(np.take_along_axis(best, order, axis=1))] = -np.inf  # filtered out
        row = {}
        for c in config.candidates:
            top = np.take_along_axis(ids_sorted[:, :c],
                                     np.argsort(-raw_sorted[:, :c], axis=1)[:, :K], axis=1)
            row[str(c)] = round(float(np.mean([len(set(t) & set(e)) / K for t, e in
                                               zip(top.tolist(), expected.tolist(),
                                                   strict=True)])), 4)
        out[f"{name}{'_filtered' if filtered else ''}"] = row
        print("ceiling", name, filtered, row, flush=True)
    return out


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main(config: BenchConfig) -> dict[str, Any]:
    work = Path(config.workdir or tempfile.mkdtemp(prefix="ann_bench-"))
    real = config.real_vectors is not None
    source = real_source(config) if real else synthetic_source(config)
    graph = f"-m{config.hnsw_m}" if config.hnsw_m is not None else ""
    graph += f"-efc{config.ef_construct}" if config.ef_construct else ""
    graph += "-links" if config.payload_links else ""
    folder = work / (f"real-{source.points}{graph}" if real else
                     f"{config.geometry}-{source.points}{graph}")
    report: dict[str, Any] = {
        "command": "python -m bench.ann_bench " + " ".join(sys.argv[1:]),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        "machine": f"{cpu_name()}, {os.cpu_count()} CPUs (load average at start "
                   f"{os.getloadavg()[0]:.1f}): compare with the exact scan of the same run",
    }
    if config.ceiling_only:
        started = time.perf_counter()
        report["candidate_ceiling"] = candidate_ceiling(config, source)
        report["ceiling_s"] = round(time.perf_counter() - started, 1)
        config.out.parent.mkdir(parents=True, exist_ok=True)
        config.out.write_text(json.dumps(report, indent=2))
        return report
    dim = source.queries["text"].shape[1]
    info = CollectionInfo("bench-real" if real else "bench-synthetic", dim, 16, 256,
                          text_mean=tuple(source.text_mean.tolist()))
    if not (folder / META_FILE).exists():
        report["build"] = build(config, folder, info, source)
        (folder / "build.json").write_text(json.dumps(report["build"]))
    else:
        report["build"] = json.loads((folder / "build.json").read_text())
    report["build"]["disk_mb"] = round(disk_bytes(folder) / 1e6, 1)
    started = time.perf_counter()
    truth = ground_truth(config, source)
    report["numpy_truth_s"] = round(time.perf_counter() - started, 1)
    store = EdgeStore.open(folder)
    report["points"] = store.count()
    report["image_mean_points"] = store.info.image_mean_points
    first = next(iter(source.chunks()))[1][:corpus.CHUNK]
    texts = source.queries["text"]
    report["geometry"] = {
        "text_top1_cosine": round(float(np.mean((texts @ first.T).max(1))), 3),
        "centred_text_top1_cosine": round(float(np.mean((
            centre(texts, source.text_mean) @ centre(first, store.info.image_mean).T).max(1))), 3),
        "note": f"top-1 over the first {len(first)} images only (a lower bound)",
        "image_mean_norm": round(float(np.linalg.norm(store.info.image_mean)), 3),
        "text_mean_dot_image_mean": round(float(
            np.asarray(store.info.text_mean) @ np.asarray(store.info.image_mean)), 3),
        "text_queries_cross_the_gap": crosses_gap(store.info),
    }
    for size in config.calibration_sizes:  # as ingest does; the last one stands
        started = time.perf_counter()
        measured = store.calibrate_text_search(source.generic[:size])
        if measured is None:
            continue
        report["text_calibration"] = {**asdict(measured), "summary": measured.summary(),
                                      "seconds": round(time.perf_counter() - started, 1)}
        report.setdefault("text_calibrations", []).append(report["text_calibration"])
        print(measured.summary(), flush=True)
    report["results"] = query_all(config, store, source.queries, truth,
                                  quantized=config.quantization != "none",
                                  warm=source.warm)
    store.close()
    config.out.parent.mkdir(parents=True, exist_ok=True)
    config.out.write_text(json.dumps(report, indent=2))
    if not config.keep and config.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return report


def parse(argv: list[str] | None = None) -> BenchConfig:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=BenchConfig.points)
    parser.add_argument("--dim", type=int, default=BenchConfig.dim)
    parser.add_argument("--geometry", choices=sorted(corpus.GEOMETRIES),
                        default=BenchConfig.geometry)
    parser.add_argument("--hnsw-m", type=int, default=None,
                        help="m of the centred vector's graph (default: the product's; 0: "
                             "no graph, a scan of its int8 copy)")
    parser.add_argument("--ef-construct", type=int, default=None)
    parser.add_argument("--queries", type=int, default=BenchConfig.queries)
    parser.add_argument("--exact-queries", type=int, default=BenchConfig.exact_queries)
    parser.add_argument("--quantization", choices=["int8", "binary", "none"],
                        default=BenchConfig.quantization)
    parser.add_argument("--candidates", type=int, nargs="+", default=[100, 200, 400, 800])
    parser.add_argument("--efs", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--workdir", type=Path, default=None,
                        help="Build here and keep it; a later run with the same --points "
                             "queries what it holds.")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--ceiling-only", action="store_true",
                        help="No Qdrant: recall@20 of an exact first stage over C candidates "
                             "(numpy), to size the candidate count at a scale too large to "
                             "index here.")
    parser.add_argument("--indexes-after-build", action="store_true",
                        help="Create the payload indexes after the HNSW build (ingest "
                             "creates them before).")
    parser.add_argument("--payload-links", action="store_true",
                        help="Payload indexes with Qdrant's extra graph links per indexed "
                             "value, made before the build (the product makes them without; "
                             "a longer build).")
    parser.add_argument("--acorn-beams", type=int, nargs="*", default=[],
                        help="Also walk filtered queries with ACORN at these beams (slow at "
                             "1M: hundreds of ms per query).")
    parser.add_argument("--calibration-sizes", type=int, nargs="+",
                        default=list(BenchConfig.calibration_sizes),
                        help="Measure text search with this many caption vectors, once per "
                             "size in order; the last sets the plan (default: as ingest).")
    parser.add_argument("--real-vectors", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=BenchConfig.out)
    args = parser.parse_args(argv)
    if args.payload_links and args.indexes_after_build:
        parser.error("--payload-links needs the payload indexes before the HNSW build "
                     "(Qdrant adds the links while it builds the graph); drop "
                     "--indexes-after-build")
    return BenchConfig(points=args.points, dim=args.dim, queries=args.queries,
                       exact_queries=args.exact_queries, quantization=args.quantization,
                       candidates=tuple(args.candidates), efs=tuple(args.efs),
                       workdir=args.workdir, keep=args.keep, real_vectors=args.real_vectors,
                       indexes_after_build=args.indexes_after_build,
                       payload_links=args.payload_links, acorn_beams=tuple(args.acorn_beams),
                       calibration_sizes=tuple(args.calibration_sizes),
                       ceiling_only=args.ceiling_only, geometry=args.geometry,
                       hnsw_m=args.hnsw_m, ef_construct=args.ef_construct, out=args.out)


if __name__ == "__main__":
    main(parse())

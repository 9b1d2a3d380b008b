"""One way of indexing ``centred``, probed quickly: build time and two-stage recall/latency.

    python -m bench.ann_probe --points 100000 --graph 32 256            # HNSW m 32, ef_c 256
    python -m bench.ann_probe --points 100000 --graph 0 0 --codes binary2  # no graph: a scan

A shard with only what a text query's two stages read (``image`` with no graph, rescored
exactly; ``centred`` with the graph and the codes under test) is built straight through
Qdrant Edge from ``bench.ann_corpus`` vectors, without payloads or tokens, so a
configuration can be compared at 1M points in the time one build takes. Text queries only;
recall@20 against numpy's exact answer, p50 latency, and the exact scan on ``image`` in
the same run. ``bench/ann_bench.py`` measures the product's own collections (both graphs,
payload filters, image queries, the calibration). Writes
``bench/results/ann_probe_<points>_<config>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from bench import ann_bench, cpu_name
from bench import ann_corpus as corpus

K = 20
RESULTS = Path(__file__).with_name("results")


def codes_config(codes: str) -> Any:
    from qdrant_edge import (
        BinaryQuantizationConfig,
        BinaryQuantizationEncoding,
        ScalarQuantizationConfig,
        ScalarType,
    )
    from qdrant_edge import BinaryQuantizationQueryEncoding as QueryEncoding

    if codes == "int8":
        return ScalarQuantizationConfig(ScalarType.Int8, quantile=0.99, always_ram=True)
    encoding = {"binary1": BinaryQuantizationEncoding.OneBit,
                "binary2": BinaryQuantizationEncoding.TwoBits}[codes]
    return BinaryQuantizationConfig(always_ram=True, encoding=encoding,
                                    query_encoding=QueryEncoding.Scalar8Bits)


def build(folder: Path, geo: corpus.Geometry, points: int, m: int, ef_construct: int,
          codes: str) -> dict[str, float]:
    from qdrant_edge import (
        Distance,
        EdgeConfig,
        EdgeShard,
        EdgeVectorParams,
        HnswIndexConfig,
        Point,
        UpdateOperation,
        VectorStorageDatatype,
    )

    total = np.zeros(geo.dim)
    for _, vectors in corpus.image_chunks(geo, points, 0):
        total += vectors.sum(axis=0, dtype=np.float64)
    mean = (total / points).astype(np.float32)
    plain = HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10_000)
    graph = HnswIndexConfig(m=m, ef_construct=max(ef_construct, 4), full_scan_threshold=10_000)
    config = EdgeConfig(vectors={
        "image": EdgeVectorParams(size=geo.dim, distance=Distance.Cosine, hnsw_config=plain),
        "centred": EdgeVectorParams(size=geo.dim, distance=Distance.Cosine,
                                    datatype=VectorStorageDatatype.Float16, hnsw_config=graph,
                                    quantization_config=codes_config(codes))})
    shard = EdgeShard.create(str(folder), config)
    started = time.perf_counter()
    for start, vectors in corpus.image_chunks(geo, points, 0):
        centred = corpus.unit(vectors - mean)
        for first in range(0, len(vectors), 1000):
            shard.update(UpdateOperation.upsert_points([
                Point(str(uuid.UUID(int=start + i + 1)),
                      {"image": vectors[i].tolist(), "centred": centred[i].tolist()}, {})
                for i in range(first, min(first + 1000, len(vectors)))]))
    upsert_s = time.perf_counter() - started
    started = time.perf_counter()
    shard.optimize()
    optimize_s = time.perf_counter() - started
    shard.close()
    return {"upsert_s": round(upsert_s, 1), "graph_build_s": round(optimize_s, 1)}


def request(query: np.ndarray, candidates: int | None, graph: bool) -> Any:
    """The exact scan on ``image`` (``candidates`` None), or the two stages: ``candidates``
    from ``centred``'s codes (through its graph, when it has one), rescored on ``image``."""
    from qdrant_edge import Prefetch, QuantizationSearchParams, Query, QueryRequest, SearchParams

    nearest = Query.Nearest(query.tolist(), using="image")
    if candidates is None:
        return QueryRequest(limit=K, query=nearest, with_payload=False,
                            params=SearchParams(exact=True))
    first = SearchParams(hnsw_ef=candidates if graph else None,
                         quantization=QuantizationSearchParams(rescore=False))
    return QueryRequest(
        limit=K, query=nearest, with_payload=False,
        prefetches=[Prefetch(limit=candidates, params=first,
                             query=Query.Nearest(query.tolist(), using="centred"))],
        params=SearchParams(quantization=QuantizationSearchParams(ignore=True)))


def measure(shard: Any, texts: np.ndarray, truth: np.ndarray, candidates: int | None,
            graph: bool) -> dict[str, float]:
    """Recall@20 and latency (``ann_bench.measure``) of one request kind over ``texts``."""
    requests = [request(query, candidates, graph) for query in texts]
    return ann_bench.measure(len(requests), truth, lambda i: shard.query(requests[i]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--graph", type=int, nargs=2, default=(32, 256),
                        metavar=("M", "EF_CONSTRUCT"), help="0 0: no graph, a scan")
    parser.add_argument("--codes", choices=["int8", "binary1", "binary2"], default="int8")
    parser.add_argument("--geometry", choices=sorted(corpus.GEOMETRIES), default="calibrated")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--candidates", type=int, nargs="+",
                        default=[200, 400, 800, 1600, 3200])
    parser.add_argument("--workdir", type=Path, default=None,
                        help="build here and keep it (a later run reuses it)")
    args = parser.parse_args()
    m, ef_construct = args.graph
    name = f"{args.geometry}-m{m}-efc{ef_construct}-{args.codes}"
    from qdrant_edge import EdgeShard

    work = args.workdir or Path(tempfile.mkdtemp(prefix="ann_probe-"))
    folder = work / f"{name}-{args.points}"
    geo = corpus.geometry(args.points, 512, 0, args.geometry)
    report: dict[str, Any] = {
        "command": f"python -m bench.ann_probe --points {args.points} --graph {m} "
                   f"{ef_construct} --codes {args.codes} --geometry {args.geometry} "
                   f"--queries {args.queries} --candidates "
                   + " ".join(str(c) for c in args.candidates),
        "points": args.points, "centred_graph": {"m": m, "ef_construct": ef_construct},
        "codes": args.codes, "geometry": args.geometry,
        "machine": f"{cpu_name()}, {os.cpu_count()} CPUs (load average at start "
                   f"{os.getloadavg()[0]:.1f})",
    }
    if not folder.exists():
        folder.mkdir(parents=True)
        report["build"] = build(folder, geo, args.points, m, ef_construct, args.codes)
        (folder / "build.json").write_text(json.dumps(report["build"]))
    else:
        report["build"] = json.loads((folder / "build.json").read_text())
    texts = corpus.text_queries(geo, args.queries, 0)
    truth = corpus.exact_top_k(geo, args.points, 0, texts, K)[0]
    shard = EdgeShard.load(str(folder))
    report["exact"] = measure(shard, texts[:30], truth, None, graph=False)
    print("exact", report["exact"], flush=True)
    report["two_stages"] = {}
    for candidates in args.candidates:
        row = measure(shard, texts, truth, candidates, graph=m > 0)
        report["two_stages"][str(candidates)] = row
        print(candidates, row, flush=True)
    shard.close()
    report["disk_mb"] = round(sum(p.stat().st_size for p in folder.rglob("*")
                                  if p.is_file()) / 1e6, 1)
    out = RESULTS / f"ann_probe_{args.points // 1000}k_{name}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

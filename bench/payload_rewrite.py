"""What rewriting payloads costs an indexed Qdrant Edge shard: search speed and a rebuild.

    python -m bench.payload_rewrite --points 30000 --out bench/results/payload_rewrite.json

Builds a collection with the product's schema (``EdgeStore``: 512-d ``image`` vectors on
synthetic clusters, cached tokens, the payload indexes), has it build its HNSW graph
(``optimize``, timed), and measures HNSW search (beam ``--ef``) and the exact scan. Then,
for each ``--fractions`` in turn, it rewrites one payload key on that share of the points
through the store's own write (``_set_payload_fields``, as ``pair_folders_and_types``
does), measures the searches again, re-optimizes (timed) and measures once more. The
baseline is the same build before any rewrite. Qdrant moves a point whose payload is
rewritten out of its merged, indexed segment; this says what that costs and how long the
rebuild takes, which decides whether an upgrade that rewrites every point may run inside
an ingest.
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
from pathlib import Path
from typing import Any

import numpy as np

from bench import cpu_name
from twinrank.store.edge import EdgeStore
from twinrank.store.schema import CollectionInfo, PointRecord, SearchPlan

QUERIES, WARM = 300, 50


def records(points: int, dim: int, seed: int = 0) -> list[PointRecord]:
    """Unit vectors around 50 cluster centres, in 10 folders, with small cached tokens."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, dim))
    out = []
    for i in range(points):
        vector = centres[i % 50] + 0.8 * rng.standard_normal(dim)
        path = f"/photos/{i % 10}/img{i}.jpg"
        folders = ["/", "/photos", f"/photos/{i % 10}"]
        out.append(PointRecord(str(uuid.UUID(int=i + 1)),
                               (vector / np.linalg.norm(vector)).astype(np.float32),
                               rng.standard_normal((4, 8)).astype(np.float32),
                               {"paths": [path], "folders": folders, "format": "jpeg"}))
    return out


def search_ms(store: EdgeStore, queries: np.ndarray, plan: SearchPlan) -> float:
    times = []
    for query in queries:
        started = time.perf_counter()
        store.search(query, 20, plan=plan)
        times.append((time.perf_counter() - started) * 1000)
    return round(float(np.median(times[WARM:])), 3)


def main(points: int, dim: int, ef: int, fractions: list[float], out: Path) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="payload_rewrite-"))
    info = CollectionInfo("bench-synthetic", dim, 4, 8)
    rng = np.random.default_rng(1)
    queries = rng.standard_normal((QUERIES, dim)).astype(np.float32)
    plans = {"hnsw_ms": SearchPlan(exact=False, hnsw_ef=ef),
             "exact_ms": SearchPlan(exact=True, hnsw_ef=None)}
    report: dict[str, Any] = {
        "command": "python -m bench.payload_rewrite " + " ".join(sys.argv[1:]),
        "machine": f"{cpu_name()}, {os.cpu_count()} CPUs (load average at start "
                   f"{os.getloadavg()[0]:.1f}): compare rows of the same run",
        "points": points, "dim": dim, "hnsw_ef": ef}
    store = EdgeStore.open(work / "store", info)
    try:
        made = records(points, dim)
        for start in range(0, points, 1000):
            store.upsert(made[start:start + 1000])
        started = time.perf_counter()
        store.optimize()
        report["first_optimize_s"] = round(time.perf_counter() - started, 1)
        started = time.perf_counter()
        store.optimize()
        report["optimize_unchanged_s"] = round(time.perf_counter() - started, 3)
        report["built"] = {k: search_ms(store, queries, p) for k, p in plans.items()}
        ids = [r.id for r in made]
        for fraction in fractions:
            chosen = ids[:max(1, int(fraction * points))]
            row: dict[str, Any] = {"points_rewritten": len(chosen)}
            started = time.perf_counter()
            for start in range(0, len(chosen), 1000):
                store._set_payload_fields(chosen[start:start + 1000],
                                          {"folder_formats": [f"jpeg:{fraction}"]})
            row["rewrite_s"] = round(time.perf_counter() - started, 2)
            row["after_rewrite"] = {k: search_ms(store, queries, p) for k, p in plans.items()}
            started = time.perf_counter()
            store.optimize()
            row["optimize_s"] = round(time.perf_counter() - started, 1)
            row["after_optimize"] = {k: search_ms(store, queries, p) for k, p in plans.items()}
            report[f"rewrite_{fraction}"] = row
            print(fraction, row, flush=True)
    finally:
        store.close()
        shutil.rmtree(work, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    return report


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=30_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--ef", type=int, default=64, help="HNSW beam of the timed searches.")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.01, 1.0],
                        help="Shares of the points whose payload is rewritten, in turn.")
    parser.add_argument("--out", type=Path, default=Path("bench/results/payload_rewrite.json"))
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse()
    main(args.points, args.dim, args.ef, args.fractions, args.out)

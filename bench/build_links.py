"""Graph build time with and without Qdrant's extra graph links per indexed payload value.

    python -m bench.build_links --points 100000 --pairs 2 --out bench/results/build_links.json

Qdrant builds, besides each vector's HNSW graph, extra links among the points that share
an indexed payload value, when the payload indexes exist before the graph (ingest makes
them when it creates a collection). They serve filtered graph walks; twinrank's policy
scans under a filter instead (``schema.search_plan``), so the store makes its indexes
without them (``schema.PAYLOAD_GRAPH_LINKS``). This builds the same synthetic collection
(``bench.ann_corpus``, the product's shard configuration, indexes before the graph) with
and without the links, in pairs whose order alternates, and records the upsert and graph
build (``optimize``) times, the disk size, and the filtered exact search's p50 and recall
on each build (after a warm-up of ``WARM_UP`` of its queries).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bench import ann_bench, cpu_name
from twinrank.store.edge import EdgeStore
from twinrank.store.schema import CollectionInfo, SearchPlan

WARM_UP = 10  # queries run untimed before the timed pass (then timed with the rest)


def build_once(config: ann_bench.BenchConfig, source: ann_bench.Source,
               truth: dict[str, np.ndarray], folder: Path, links: bool) -> dict[str, Any]:
    """One build with the links on or off, then filtered exact queries on it."""
    info = CollectionInfo("bench-synthetic", config.dim, 16, 256,
                          text_mean=tuple(source.text_mean.tolist()))
    row = ann_bench.build(replace(config, payload_links=links), folder, info, source)
    row["disk_mb"] = round(ann_bench.disk_bytes(folder) / 1e6, 1)
    store = EdgeStore.open(folder)
    for modality in ("text", "image"):
        qs = source.queries[modality]
        row[f"{modality}_filtered_exact"] = ann_bench.measure(
            len(qs), truth[f"{modality}_filtered"],
            lambda i, qs=qs: store.search(qs[i], ann_bench.K, ann_bench.FILTER,
                                          plan=SearchPlan(exact=True, hnsw_ef=None)),
            warm=range(len(qs) - WARM_UP, len(qs)))  # the last few, untimed, first
    store.close()
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("bench/results/build_links.json"))
    args = parser.parse_args(argv)
    report: dict[str, Any] = {
        "command": "python -m bench.build_links " + " ".join(sys.argv[1:] if argv is None
                                                              else argv),
        "machine": f"{cpu_name()}, {os.cpu_count()} CPUs (load average at start "
                   f"{os.getloadavg()[0]:.1f})",
        "points": args.points, "runs": []}
    config = ann_bench.BenchConfig(points=args.points, queries=args.queries,
                                   quantization="none")
    source = ann_bench.synthetic_source(config)  # the same points and answers for every build
    truth = ann_bench.ground_truth(config, source)
    work = Path(tempfile.mkdtemp(prefix="build_links-"))
    try:
        for pair in range(args.pairs):
            order = (True, False) if pair % 2 == 0 else (False, True)
            for links in order:
                folder = work / f"pair{pair}-{'links' if links else 'none'}"
                row = {"pair": pair, "payload_links": links,
                       **build_once(config, source, truth, folder, links)}
                print(json.dumps(row), flush=True)
                report["runs"].append(row)
                shutil.rmtree(folder, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for links in (True, False):
        times = [r["optimize_s"] for r in report["runs"] if r["payload_links"] is links]
        report[f"optimize_s_median_{'with' if links else 'without'}_links"] = float(
            np.median(times))
    without = report["optimize_s_median_without_links"]  # 0.0 s (rounded) for tiny builds
    report["ratio_with_over_without"] = (
        round(report["optimize_s_median_with_links"] / without, 2) if without else None)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()

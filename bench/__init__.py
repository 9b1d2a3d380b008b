"""Benchmarks: each is a module run as ``python -m bench.NAME`` (or ``twinrank bench NAME``)
that measures against a baseline in the same run and writes ``bench/results/NAME.json``.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

BENCHMARKS: dict[str, str] = {
    "ingest_bench": "ingest images/s vs the bare image-tower forward rate (issue 3)",
    "cli_speed_bench": "whole-process search (fast path vs torch), no-op ingest, --help (issue 19)",
    "store_bench": "Qdrant Edge vs qdrant-client local: upsert, p50/p95, filters, recall (issue 8)",
    "rerank_bench": "cached-token reranking vs recomputed tokens vs BLIP-ITM size (issue 5)",
    "train_bench": "JOINT vs SEP parameters, JOINT vs bi-encoder step time (issue 4)",
    "train_quality": "quick text->image R@1 of a trained model on scenes splits (issue 4)",
    "eval_scenes": "the evaluation targets on >= 2,000-image scenes splits (issue 7)",
    "scenes_errors": "a model's top-1 mistakes on scenes, by kind: binding or perception",
    "ui_page": "thumbnail cache vs originals, facets at 100k (issue 6)",
    "demo_text_vectors": "text/image vectors from the demo model for store_bench (issue 8)",
    "ann_bench": "text queries at 100k-1M: two stages over centred vs exact vs HNSW (issue 20)",
    "filter_bench": "folder-and-type filters at 1M: one folder_formats match vs two (issue 20)",
    "payload_rewrite": "search speed after payload rewrites, and the rebuild they need (issue 20)",
    "build_links": "graph build time with and without Qdrant's payload links (issue 20)",
    "ann_probe": "one way of indexing centred at up to 1M points: build time, text recall/p50",
    "blip_bench": "BLIP presets: ingest speed, rerank from cached tokens vs images, bytes/image",
    "preset_speed": "image-tower speed of each preset's architecture on this CPU",
    "ray_ingest_bench": "ingest on Ray vs the in-process ingest of the same photos",
    "ui_latency": "the app in headless Chromium: Enter to results, 1 and 5 sessions (issue 21)",
    "token_read_bench": "20 BLIP-size token sets read: side file vs multivector, RAM (issue 34)",
    "decode_bench": "camera-size JPEG decode: draft sizes vs the reference pixels (issue 34)",
    "blip_rerank_bench": "BLIP-base rerank of 20 and a cold query: numpy query side vs torch",
    "blip_search_bench": "whole twinrank search on a BLIP-base collection: fast path vs torch",
    "busy_store_bench": "searches during an ingest: failures, p50/p95, ingest slowdown (issue 33)",
}


def run_benchmark(name: str, args: list[str]) -> int:
    """Run one benchmark as its own process from the project root; returns its exit code."""
    if name not in BENCHMARKS:
        known = ", ".join(sorted(BENCHMARKS))
        raise ValueError(f"Unknown benchmark {name!r}; choose one of: {known}.")
    command = [sys.executable, "-m", f"bench.{name}", *args]
    return subprocess.call(command, cwd=ROOT)


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), for a result's record of its machine."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"

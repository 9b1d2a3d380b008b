"""Reading the 20 token sets of one rerank, per back end, at BLIP-base geometry (issue 34).

    python -m bench.token_read_bench --points 200 --out bench/results/token_read_bench.json

Builds the same ``--points`` random (577, 768) float16 token sets three times: an embedded
store with today's layout (the side file of ``store.tokens``), an embedded store with the
layout it replaced (the ``tokens`` multivector in the Qdrant Edge shard, as collections made
before it keep), and qdrant-client's local mode standing in for a Qdrant server (no server
can be installed here; a server keeps the multivector on disk and answers over the network,
so this says only what the client's decoding of nested lists costs). Then, in one run and
on the same random draws of ``--k`` ids: ``store.get_tokens`` alone (p50/p90 ms), and with
the callers' conversion to a float32 (k, T, W) array (``rerank.fused``, ``search.fast``).
The three answers are checked equal. Last, the RAM that opening each store adds, each in a
fresh process (the libraries imported first): after ``open`` + ``count``, and after one read;
with, as the baseline of what Qdrant Edge itself costs, the same embedded store without
tokens; and the disk each store takes (blocks allocated).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bench import ROOT, cpu_name
from twinrank.store import CollectionInfo, PointRecord, VectorStore, open_store
from twinrank.store.schema import TOKENS_IN_FILE, TOKENS_IN_QDRANT

LAYOUTS = {  # label: (store location under the work folder, token layout), the new one first
    "edge_file": ("edge-file", TOKENS_IN_FILE),
    "edge_multivector": ("edge-multivector", TOKENS_IN_QDRANT),
    "local_mode_multivector": ("local", TOKENS_IN_QDRANT),
}
BASELINE = "edge_without_tokens"  # RAM and disk only: what Qdrant Edge costs by itself

RSS_PROBE = """
import sys, qdrant_edge, qdrant_client
from twinrank.store import open_store

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

location, url, ids = sys.argv[1], sys.argv[2] or None, sys.argv[3].split(",")
before = rss_mb()
store = open_store(location, url=url, collection="bench" if url else None)
store.count()
opened = rss_mb()
store.get_tokens(ids)
print(round(opened - before, 1), round(rss_mb() - before, 1))
"""


def point_id(i: int) -> str:
    return str(uuid.UUID(int=i + 1))


def place(label: str) -> tuple[str, str]:
    return LAYOUTS.get(label, ("edge-without-tokens", TOKENS_IN_FILE))


def open_layout(work: Path, label: str, info: CollectionInfo | None) -> VectorStore:
    where, _ = place(label)
    if label.startswith("local"):
        return open_store("", info, url=f"path:{work / where}", collection="bench")
    return open_store(work / where, info)


def build(work: Path, label: str, info: CollectionInfo, points: int, batch: int) -> float:
    """Write the same ``points`` token sets into one store; returns seconds."""
    rng = np.random.default_rng(0)
    with_tokens = label != BASELINE
    store = open_layout(work, label, replace(info, token_layout=place(label)[1],
                                             token_count=info.token_count * with_tokens))
    started = time.perf_counter()
    for first in range(0, points, batch):
        records = []
        for i in range(first, min(first + batch, points)):
            vector = rng.standard_normal(info.vector_size).astype(np.float32)
            tokens = np.random.default_rng(i).standard_normal(
                (info.token_count, info.token_width), dtype=np.float32).astype(np.float16)
            records.append(PointRecord(point_id(i), vector / np.linalg.norm(vector),
                                       tokens if with_tokens else None,
                                       {"paths": [f"/photos/img{i}.jpg"]}))
        store.upsert(records)
    store.flush()
    store.close()
    return round(time.perf_counter() - started, 1)


def timed_reads(stores: dict[str, VectorStore], draws: list[list[str]],
                repeats: dict[str, int]) -> dict[str, dict[str, Any]]:
    """p50/p90 ms of ``get_tokens`` and of it plus the float32 stack, per store; the draws
    are shared, and each store reads them in turn (A B C A B C ...)."""
    times: dict[str, dict[str, list[float]]] = {
        label: {"get_tokens_ms": [], "get_tokens_to_float32_ms": []} for label in stores}
    for n, ids in enumerate(draws):
        answers = {}
        for label, store in stores.items():
            if n >= repeats[label]:
                continue
            started = time.perf_counter()
            found = store.get_tokens(ids)
            read = time.perf_counter()
            stacked = np.stack([found[i] for i in ids]).astype(np.float32)  # (k, T, W)
            done = time.perf_counter()
            times[label]["get_tokens_ms"].append((read - started) * 1000)
            times[label]["get_tokens_to_float32_ms"].append((done - started) * 1000)
            answers[label] = stacked
        first = next(iter(answers.values()))
        assert all(np.array_equal(first, other) for other in answers.values()), ids
    return {label: {"reads": len(rows["get_tokens_ms"]),
                    **{f"{name}_p{q}": round(float(np.percentile(values, q)), 2)
                       for name, values in rows.items() for q in (50, 90)}}
            for label, rows in times.items()}


def added_ram(work: Path, label: str, ids: list[str]) -> dict[str, float]:
    """MB of RSS that opening the store adds in a fresh process, and after one read."""
    where, _ = place(label)
    location, url = (("", f"path:{work / where}") if label.startswith("local")
                     else (str(work / where), ""))
    probe = subprocess.run([sys.executable, "-c", RSS_PROBE, location, url, ",".join(ids)],
                           cwd=ROOT, capture_output=True, text=True, timeout=600, check=True)
    opened, after_read = probe.stdout.split()
    return {"open_added_rss_mb": float(opened), "after_one_read_added_rss_mb": float(after_read)}


def main(args: argparse.Namespace) -> dict[str, Any]:
    info = CollectionInfo("bench-blip-base-geometry", 256, args.tokens, args.width)
    work = Path(tempfile.mkdtemp(prefix="token_read_bench-"))
    report: dict[str, Any] = {
        "command": "python -m bench.token_read_bench " + " ".join(sys.argv[1:]),
        "machine": f"{cpu_name()}, {os.cpu_count()} CPUs (load average at start "
                   f"{os.getloadavg()[0]:.1f}): compare rows of the same run",
        "cpu": cpu_name(),
        "points": args.points, "k": args.k, "token_shape": [args.tokens, args.width],
        "token_bytes_per_image": info.bytes_per_image(),
        "local_mode_note": "qdrant-client local mode stands in for a Qdrant server (none is "
                           "installable here): it measures the client's decoding of the "
                           "multivector, not a server's disk or network",
    }
    try:
        labels = [*LAYOUTS, BASELINE]
        report["build_s"] = {label: build(work, label, info, args.points, args.batch)
                             for label in labels}
        rng = np.random.default_rng(1)
        draws = [[point_id(int(i)) for i in rng.choice(args.points, args.k, replace=False)]
                 for _ in range(args.repeats)]
        repeats = {label: args.repeats if label == "edge_file" else args.slow_repeats
                   for label in LAYOUTS}
        stores = {label: open_layout(work, label, None) for label in LAYOUTS}
        try:
            report["reads"] = timed_reads(stores, draws, repeats)
        finally:
            for store in stores.values():
                store.close()
        report["ram"] = {label: added_ram(work, label, draws[0]) for label in labels}
        report["disk_mb"] = {label: round(sum(f.stat().st_blocks * 512
                                              for f in (work / place(label)[0]).rglob("*")
                                              if f.is_file()) / 1e6, 1)
                             for label in labels}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=577, help="Tokens per image (BLIP-base).")
    parser.add_argument("--width", type=int, default=768, help="Token width (BLIP-base).")
    parser.add_argument("--k", type=int, default=20, help="Token sets per read (a rerank's).")
    parser.add_argument("--batch", type=int, default=20, help="Points per upsert.")
    parser.add_argument("--repeats", type=int, default=100, help="Reads of the side file.")
    parser.add_argument("--slow-repeats", type=int, default=10,
                        help="Reads of each multivector store (seconds each).")
    parser.add_argument("--out", type=Path, default=Path("bench/results/token_read_bench.json"))
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse())

"""Filtered search at up to 1M points: one ``folder_formats`` match against two conditions.

    python -m bench.filter_bench --points 1000000 --out bench/results/filter_bench_1m.json

A filter on a folder and a file type is one condition on the ``folder_formats`` pairs the
store writes (``store.filters.indexed_payload``) on a collection made since they exist,
and two conditions (``folders``, then each point's ``format`` checked) on an older one.
This builds one synthetic collection (``bench.ann_corpus``: the product's shard and
payloads, 10 folders, 75% jpeg) and runs the product's search (``EdgeStore.search``: a
filtered query is an exact scan of the points the filter selects) both ways on it: as the
collection is, and with its identity saying it predates the pairs (the older path, the
baseline of the same run). Also Qdrant Edge's exact count of each filter (the selection
alone) and the unfiltered exact scan, for scale. Text and image queries; recall@20
against numpy's exact answer, p50 after ``ann_bench.WARM_UP_QUERIES`` untimed queries.

Filtered queries never walk a graph (``schema.search_plan``), so the shard is built
without graphs (``m`` 0 on ``image`` and ``centred``: Qdrant still merges the segments and
makes the int8 codes): a 1M build takes minutes instead of an hour, and the scans it
measures read the same storage as in a product build.

``--walk-beams`` asks whether a graph walk could serve these filters instead: it builds
the product's graphs (``--links``: with Qdrant's extra links among the points of each
``folder_formats`` pair, the index a walk under this filter would follow) and also runs
the product's two stages (``centred`` walked under the filter at each beam, rescored on
``image``) under the pairs' filter:

    python -m bench.filter_bench --points 200000 --walk-beams 100 400 1600 --links

``--partition-beams B..`` sketches a shard per top-level folder: the product's collection,
graphs and all, holding only folder 3's points (~10%), searched under the same filters
(the pairs' match passes 75% of it, or all of it) exactly, as the policy does, and walked
in two stages at each beam; against the scans of the whole collection in the same run.

``--upgrade`` then makes the build an older collection (the pairs, their index and the
identity's flag removed), times what ``twinrank upgrade`` does to it (the pairs written
back, ``EdgeStore.pair_folders_and_types``, then the shard re-optimized) and measures the
filtered queries after each step. The build is left upgraded, as it was.
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
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from bench import ann_bench, cpu_name
from bench import ann_corpus as corpus
from twinrank.store.edge import EdgeStore, _edge_config, edge_filter
from twinrank.store.filters import SearchFilter
from twinrank.store.schema import (
    CENTRED_VECTOR,
    IMAGE_VECTOR,
    CollectionInfo,
    PointRecord,
    SearchPlan,
    two_stage_plan,
)

FILTERS = {  # folder 3 holds ~10% of the points, jpeg 75% of each folder
    "folder_and_jpeg": ann_bench.FILTER,  # ~7.5%
    "folder_and_two_types": SearchFilter(folder="/photos/3", formats=("jpeg", "png")),  # ~10%
}
FOLDER_ONLY = SearchFilter(folder="/photos/3")  # one condition either way: for scale
COUNT_REPEATS = 15


@dataclass
class FilterBenchConfig:
    points: int = 100_000
    dim: int = 512
    queries: int = 50
    seed: int = 0
    workdir: Path | None = None
    walk_beams: tuple[int, ...] = ()  # also walk the graphs under the filter (a graph build)
    links: bool = False  # the graphs with Qdrant's links per folder_formats pair
    upgrade: bool = False  # then strip the pairs, time their upgrade, measure again
    partition_beams: tuple[int, ...] = ()  # also a shard of folder 3 alone, walked
    out: Path = Path("bench/results/filter_bench.json")


def scan_only_config(info: CollectionInfo) -> Any:
    """The product's shard configuration with no graph on ``image`` or ``centred``."""
    from qdrant_edge import EdgeConfig, HnswIndexConfig

    vectors = dict(_edge_config(info).vectors)
    for name in (IMAGE_VECTOR, CENTRED_VECTOR):
        vectors[name] = ann_bench.vector_params(
            vectors[name],
            hnsw_config=HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10_000))
    return EdgeConfig(vectors=vectors)


def count_ms(store: EdgeStore, search_filter: SearchFilter, paired: bool) -> dict[str, Any]:
    """Qdrant Edge's exact count of the points a filter selects, and its median time."""
    from qdrant_edge import CountRequest

    condition = edge_filter(search_filter, paired)
    times = []
    with store._lease.hold() as shard:
        for _ in range(COUNT_REPEATS):
            started = time.perf_counter()
            points = int(shard.count(CountRequest(exact=True, filter=condition)))
            times.append((time.perf_counter() - started) * 1000)
    return {"points": points, "count_ms": round(float(np.median(times)), 2)}


PARTITION_FOLDER = 3  # the folder FILTERS name


def partition_rows(config: FilterBenchConfig, source: Any, info: CollectionInfo, work: Path,
                   truth: dict[str, np.ndarray]) -> dict[str, Any]:
    """Build (once) the product's collection of folder ``PARTITION_FOLDER``'s points alone
    (the same ids, vectors and payloads as in the whole one, its own image mean and
    graphs), then search it under ``FILTERS`` exactly and walked at each beam."""
    folder = work / f"partition-{config.points}"
    folders, jpeg = corpus.payload_columns(config.points, config.seed)
    if not (folder / "build.json").exists():
        shutil.rmtree(folder, ignore_errors=True)
        store = EdgeStore.open(folder, info)
        started = time.perf_counter()
        for start, vectors in source.chunks():
            kept = [i for i in range(len(vectors)) if folders[start + i] == PARTITION_FOLDER]
            for first in range(0, len(kept), 1000):
                store.upsert([PointRecord(str(uuid.UUID(int=start + i + 1)), vectors[i], None,
                                          corpus.payload(start + i, PARTITION_FOLDER,
                                                         bool(jpeg[start + i])))
                              for i in kept[first:first + 1000]])
        built = {"upsert_s": round(time.perf_counter() - started, 1)}
        started = time.perf_counter()
        store.optimize()
        built["optimize_s"] = round(time.perf_counter() - started, 1)
        store.close()
        (folder / "build.json").write_text(json.dumps(built))
    store = EdgeStore.open(folder)
    out: dict[str, Any] = {"build": json.loads((folder / "build.json").read_text()),
                           "points": store.count()}
    out["build"]["disk_mb"] = round(ann_bench.disk_bytes(folder) / 1e6, 1)
    try:
        queries = len(source.queries["text"])
        for offset, modality in enumerate(("text", "image")):
            qs = np.concatenate([source.queries[modality], source.warm[modality]])
            warm = range(queries, len(qs))
            for name, search_filter in FILTERS.items():
                expected = truth[name][offset * queries:(offset + 1) * queries]
                rows: dict[str, Any] = {"exact (the policy)": ann_bench.measure(
                    queries, expected, lambda i, f=search_filter, qs=qs, m=modality:
                    store.search(qs[i], ann_bench.K, f, modality=m), warm)}
                for beam in config.partition_beams:
                    rows[f"walk_{beam}"] = ann_bench.measure(
                        queries, expected, lambda i, f=search_filter, qs=qs, m=modality,
                        b=beam: store.search(qs[i], ann_bench.K, f, modality=m,
                                             plan=two_stage_plan(b, ann_bench.K)), warm)
                out[f"{modality}_{name}"] = rows
                print("partition", modality, name, rows, flush=True)
    finally:
        store.close()
    return out


def make_older(store: EdgeStore) -> int:
    """Turn a collection into one an older twinrank made: no ``folder_formats`` on any
    point, no index on it, no flag in the identity. Returns the points stripped."""
    from qdrant_edge import UpdateOperation

    ids = [point_id for point_id, _ in store.iter_payloads()]
    with store._lease.hold() as shard:
        for start in range(0, len(ids), 10_000):
            shard.update(UpdateOperation.delete_payload(ids[start:start + 10_000],
                                                        ["folder_formats"]))
        shard.update(UpdateOperation.delete_field_index("folder_formats"))
    older = {k: v for k, v in asdict(store.info).items() if k != "folder_formats"}
    store._save_info(CollectionInfo.from_dict(older))
    return len(ids)


def upgrade_rows(store: EdgeStore, source: Any, truth: dict[str, np.ndarray],
                 queries: int) -> dict[str, Any]:
    """Strip the pairs, then time what ``twinrank upgrade`` does (``upgrade_collection``):
    the pairs written back, then the shard re-optimized, since Qdrant moved every point
    whose payload was rewritten out of its merged segment. The filtered queries (the
    product's path, one match on the pairs) are measured after each step."""
    started = time.perf_counter()
    stripped = make_older(store)
    stripped_s = time.perf_counter() - started
    rows: dict[str, Any] = {"points_stripped": stripped,
                            "strip_s (the bench's own)": round(stripped_s, 1)}

    def measure(step: str) -> None:
        rows[f"count_{step}"] = count_ms(store, FILTERS["folder_and_jpeg"], True)
        for offset, modality in enumerate(("text", "image")):
            qs = np.concatenate([source.queries[modality], source.warm[modality]])
            for name, search_filter in FILTERS.items():
                expected = truth[name][offset * queries:(offset + 1) * queries]
                rows[f"{modality}_{name}_{step}"] = found = ann_bench.measure(
                    queries, expected, lambda i, f=search_filter, qs=qs, m=modality:
                    store.search(qs[i], ann_bench.K, f, modality=m), range(queries, len(qs)))
                print(step, modality, name, found, flush=True)

    started = time.perf_counter()
    rows["points_paired"] = store.pair_folders_and_types()
    rows["pairs_s"] = round(time.perf_counter() - started, 1)
    assert store.info.folder_formats and rows["points_paired"] == stripped
    measure("after_pairs")
    started = time.perf_counter()
    store.optimize()
    rows["optimize_s"] = round(time.perf_counter() - started, 1)
    measure("after_optimize")
    return rows


def main(config: FilterBenchConfig) -> dict[str, Any]:
    work = Path(config.workdir or tempfile.mkdtemp(prefix="filter_bench-"))
    graphs = bool(config.walk_beams)
    kind = ("graphs-links" if config.links else "graphs") if graphs else "scan-only"
    folder = work / f"{kind}-{config.points}"
    bench = ann_bench.BenchConfig(points=config.points, dim=config.dim, quantization="none",
                                  queries=config.queries, seed=config.seed,
                                  payload_links=("folder_formats",) if config.links else False)
    source = ann_bench.synthetic_source(bench)
    info = CollectionInfo("bench-synthetic", config.dim, 16, 256,
                          text_mean=tuple(source.text_mean.tolist()))
    report: dict[str, Any] = {
        "command": "python -m bench.filter_bench " + " ".join(sys.argv[1:]),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        "machine": f"{cpu_name()}, {os.cpu_count()} CPUs (load average at start "
                   f"{os.getloadavg()[0]:.1f}): compare rows of the same run",
    }
    if not (folder / "build.json").exists():
        built = ann_bench.build(bench, folder, info, source,
                                edge_config=None if graphs else scan_only_config(info))
        (folder / "build.json").write_text(json.dumps(built))
    report["build"] = json.loads((folder / "build.json").read_text())
    report["build"]["disk_mb"] = round(ann_bench.disk_bytes(folder) / 1e6, 1)
    report["build"]["shard"] = "the product's" if graphs else \
        "the product's (int8 copy of centred), no graphs"
    folders, jpeg = corpus.payload_columns(config.points, config.seed)
    masks = {"folder_and_jpeg": (folders == 3) & jpeg, "folder_and_two_types": folders == 3}
    store = EdgeStore.open(folder)
    try:
        report["points"] = store.count()
        paired_info = store.info
        assert paired_info.folder_formats, "a new collection carries the pairs"
        report["selection"] = {
            name: {"pairs": count_ms(store, f, True), "two_fields": count_ms(store, f, False)}
            for name, f in {**FILTERS, "folder_only": FOLDER_ONLY}.items()}
        asked = np.concatenate([source.queries["text"], source.queries["image"]])
        truth = {name: source.truth(asked, mask) for name, mask in  # one pass per filter
                 {**masks, "unfiltered": None}.items()}
        results: dict[str, Any] = {}
        for offset, modality in enumerate(("text", "image")):
            qs = np.concatenate([source.queries[modality], source.warm[modality]])
            count, warm = len(source.queries[modality]), range(len(source.queries[modality]),
                                                               len(qs))
            for name, search_filter in FILTERS.items():
                expected = truth[name][offset * count:(offset + 1) * count]
                rows: dict[str, Any] = {}
                for way, flag in (("two_fields", False), ("pairs", True)):
                    store.info = replace(paired_info, folder_formats=flag)
                    rows[way] = ann_bench.measure(
                        count, expected, lambda i, f=search_filter, qs=qs, m=modality:
                        store.search(qs[i], ann_bench.K, f, modality=m), warm)
                store.info = paired_info
                rows["speed-up"] = round(rows["two_fields"]["p50_ms"]
                                         / rows["pairs"]["p50_ms"], 2)
                for beam in config.walk_beams:  # the pairs' filter, walked
                    rows[f"walk_{beam}"] = ann_bench.measure(
                        count, expected, lambda i, f=search_filter, qs=qs, m=modality, b=beam:
                        store.search(qs[i], ann_bench.K, f, modality=m,
                                     plan=two_stage_plan(b, ann_bench.K)), warm)
                results[f"{modality}_{name}"] = rows
                print(modality, name, rows, flush=True)
            exact = SearchPlan(exact=True, hnsw_ef=None)
            results[f"{modality}_unfiltered_exact"] = ann_bench.measure(
                min(count, 20), truth["unfiltered"][offset * count:(offset + 1) * count],
                lambda i, qs=qs, m=modality, plan=exact: store.search(
                    qs[i], ann_bench.K, plan=plan, modality=m),
                range(count, count + 5))
        report["results"] = results
        if config.partition_beams:
            report["partition"] = partition_rows(config, source, info, work, truth)
        if config.upgrade:
            report["upgrade"] = upgrade_rows(store, source, truth,
                                             len(source.queries["text"]))
    finally:
        store.close()
    config.out.parent.mkdir(parents=True, exist_ok=True)
    config.out.write_text(json.dumps(report, indent=2))
    if config.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return report


def parse(argv: list[str] | None = None) -> FilterBenchConfig:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=FilterBenchConfig.points)
    parser.add_argument("--dim", type=int, default=FilterBenchConfig.dim)
    parser.add_argument("--queries", type=int, default=FilterBenchConfig.queries)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="Build here and keep it; a later run with the same --points "
                             "queries what it holds.")
    parser.add_argument("--walk-beams", type=int, nargs="*", default=[],
                        help="Build the product's graphs (not a scan-only shard) and also "
                             "walk them under the filter at these beams.")
    parser.add_argument("--links", action="store_true",
                        help="With --walk-beams: Qdrant's graph links among the points of "
                             "each folder_formats pair (a longer build).")
    parser.add_argument("--partition-beams", type=int, nargs="*", default=[],
                        help="Also build a collection of folder 3's points alone (a shard "
                             "per top-level folder) and walk it under the filters at these "
                             "beams.")
    parser.add_argument("--upgrade", action="store_true",
                        help="Then strip the pairs from the build (as an older twinrank "
                             "made it), time their upgrade and measure the filters again.")
    parser.add_argument("--out", type=Path, default=FilterBenchConfig.out)
    args = parser.parse_args(argv)
    if args.links and not args.walk_beams:
        parser.error("--links builds graphs for walks: give --walk-beams too")
    return FilterBenchConfig(points=args.points, dim=args.dim, queries=args.queries,
                             workdir=args.workdir, walk_beams=tuple(args.walk_beams),
                             links=args.links, upgrade=args.upgrade,
                             partition_beams=tuple(args.partition_beams), out=args.out)


if __name__ == "__main__":
    main(parse())

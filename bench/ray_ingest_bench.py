"""Ray ingest against the in-process ingest of the same photos, measured in the same run.

    python -m bench.ray_ingest_bench                 # 600 JPEGs of 1024x768, ViT-B-32
    python -m bench.ray_ingest_bench --n 64 --out /tmp/r.json  # a smoke run

Order: in-process, Ray, in-process again (the machine is shared: the two in-process runs
bracket the Ray run), each into a fresh embedded store, with the same model (random
weights of the real size), batch size and precision. Ray runs locally
(``ray.init(num_cpus=N)``) with one embedding actor; its time includes starting Ray and
the actor. Then the driver-side write path alone: packed results unpacked and upserted
(the Edge store), and what one point costs to send to a Qdrant server (JSON bytes and
serialisation rate), which bounds where writes can stay on the driver (docs/scale.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.ingest_bench import make_photos
from twinrank.ingest import IngestConfig, run_ingest
from twinrank.ingest.collection import collection_info
from twinrank.ingest.ray_engine import RayOptions, run_ray_ingest
from twinrank.ingest.ray_stages import ModelSpec, PrecomputedEmbedder
from twinrank.ingest.report import IngestReport
from twinrank.models import create_model
from twinrank.models.encode import ImageEmbedder
from twinrank.store import CollectionInfo, PointRecord, open_store

RESULTS = Path(__file__).parent / "results" / "ray_ingest_bench.json"


def _summary(report: IngestReport, count: int, driver_cpu_s: float) -> dict[str, Any]:
    """Rates per wall-clock second and per CPU second (this process plus, for Ray, the
    CPU seconds its read tasks and actors reported): on a machine others load, the CPU
    figure compares the engines' work, the wall-clock one also their share of the CPU."""
    stages = report.stage_seconds
    cpu_s = driver_cpu_s + stages.get("read_tasks_cpu", 0.0) + stages.get("embed_actors_cpu", 0.0)
    out: dict[str, Any] = {
        "images": report.embedded, "points": count, "failed": len(report.failed),
        "seconds": round(report.seconds, 2),
        "images_per_s": round(report.embedded / report.seconds, 2),
        "cpu_seconds": round(cpu_s, 2),
        "images_per_cpu_s": round(report.embedded / cpu_s, 2),
        "precision": report.precision,
        "stage_seconds": {k: round(v, 2) for k, v in stages.items()},
    }
    if "ray_start" in stages:
        busy = report.seconds - stages["ray_start"]
        out["images_per_s_after_ray_start"] = round(report.embedded / busy, 2)
        rates = {"read_tasks": "read_hash_decode_per_task_s",
                 "read_tasks_cpu": "read_hash_decode_per_cpu_s",
                 "embed_actors": "embed_per_actor_s", "embed_actors_cpu": "embed_per_cpu_s"}
        out["stage_images_per_s"] = {label: round(report.embedded / stages[key], 1)
                                     for key, label in rates.items() if stages.get(key)}
        out["stage_images_per_s"]["driver_write"] = round(
            report.embedded / max(1e-9, stages.get("write", 0) + stages.get("embed", 0)), 1)
    return out


def in_process(embedder: ImageEmbedder, photos: Path, store_dir: Path, source: str,
               args: argparse.Namespace) -> dict[str, Any]:
    shutil.rmtree(store_dir, ignore_errors=True)
    store = open_store(store_dir, collection_info(embedder.model, source))
    config = IngestConfig(photos, batch_size=args.batch_size, workers=args.workers,
                          precision=args.precision, progress=False)
    cpu = time.process_time()
    report = run_ingest(config, embedder, store)
    cpu = time.process_time() - cpu
    count = store.count()
    store.close()
    return _summary(report, count, cpu)


def on_ray(embedder: ImageEmbedder, photos: Path, store_dir: Path, source: str,
           args: argparse.Namespace) -> dict[str, Any]:
    shutil.rmtree(store_dir, ignore_errors=True)
    info = collection_info(embedder.model, source)
    store = open_store(store_dir, info)
    config = IngestConfig(photos, batch_size=args.batch_size, workers=args.workers,
                          precision=args.precision, progress=False)
    spec = ModelSpec(source, None, embedder.model.model_id, info.vector_size,
                     (info.token_count, info.token_width), "cpu", args.precision)
    options = RayOptions(actors=args.actors, local_cpus=args.cpus,
                         model_threads=torch.get_num_threads(),
                         files_per_task=args.files_per_task, read_cpus=args.read_cpus)
    cpu = time.process_time()
    report = run_ray_ingest(config, spec, embedder, store, options)
    cpu = time.process_time() - cpu
    count = store.count()
    store.close()
    return _summary(report, count, cpu)


def write_path(embedder: ImageEmbedder, info: CollectionInfo, store_dir: Path,
               n: int, batch: int) -> dict[str, Any]:
    """The driver's share per image: unpack an actor's result and upsert it (Edge), and
    build + serialise the same point for a Qdrant server (qdrant-client's REST body)."""
    from qdrant_client import models

    rng = np.random.default_rng(0)
    shape = (info.token_count, info.token_width)
    packer = PrecomputedEmbedder(embedder, info.vector_size, shape)
    packed = [packer.pack(rng.standard_normal(info.vector_size).astype(np.float32),
                          rng.standard_normal(shape).astype(np.float16)) for _ in range(n)]
    payload = {"paths": ["/photos/2024/07/IMG_01234.JPG"], "folders": ["/photos", "/photos/2024",
               "/photos/2024/07"], "files": {"/photos/2024/07/IMG_01234.JPG": {
                   "size": 312_345, "mtime_ns": 1_720_000_000_000_000_000}}, "size": 312_345,
               "mtime": 1.72e9, "width": 1024, "height": 768, "format": "JPEG",
               "captured_at": "2024-07-03T10:11:12Z", "captured_at_source": "exif",
               "content_hash": "ab" * 32, "ingested_at": "2026-12-02T08:00:00Z"}
    shutil.rmtree(store_dir, ignore_errors=True)
    store = open_store(store_dir, info)
    began = time.perf_counter()
    for first in range(0, n, batch):
        vectors, tokens = packer.embed_arrays(packed[first:first + batch])
        store.upsert([PointRecord(f"00000000-0000-4000-8000-{i:012d}", v, t, payload)
                      for i, (v, t) in enumerate(zip(vectors, tokens, strict=True), first)])
    store.flush()
    edge_s = time.perf_counter() - began
    store.close()
    began = time.perf_counter()
    sizes = []
    for first in range(0, n, batch):
        vectors, tokens = packer.embed_arrays(packed[first:first + batch])
        for i, (v, t) in enumerate(zip(vectors, tokens, strict=True), first):
            point = models.PointStruct(
                id=f"00000000-0000-4000-8000-{i:012d}", payload=payload,
                vector={"image": v.tolist(), "tokens": t.astype(np.float32).tolist()})
            sizes.append(len(point.model_dump_json()))
    server_s = time.perf_counter() - began
    return {
        "images": n, "vector_bytes": info.vector_size * 4,
        "token_bytes": info.bytes_per_image(), "packed_bytes_driver_receives": packed[0].nbytes,
        "edge_unpack_upsert_images_per_s": round(n / edge_s, 1),
        "server_json_bytes_per_image": int(np.mean(sizes)),
        "server_build_and_serialise_images_per_s": round(n / server_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=600, help="generated photos to ingest")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="decode threads (per task)")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--actors", type=int, default=1)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2,
                        help="num_cpus of the local Ray")
    parser.add_argument("--files-per-task", type=int, default=16)
    parser.add_argument("--read-cpus", type=float, default=1.0)
    parser.add_argument("--write-n", type=int, default=2000, help="points for the write path")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="twinrank-ray-bench-"))
    load = [round(os.getloadavg()[0], 2)]
    try:
        photo_bytes = make_photos(work / "photos", args.n)
        model = create_model(args.model, device="cpu")
        embedder = ImageEmbedder(model, args.precision)
        info = collection_info(model, args.model)
        first = in_process(embedder, work / "photos", work / "a", args.model, args)
        load.append(round(os.getloadavg()[0], 2))
        ray_run = on_ray(embedder, work / "photos", work / "ray", args.model, args)
        load.append(round(os.getloadavg()[0], 2))
        second = in_process(embedder, work / "photos", work / "b", args.model, args)
        load.append(round(os.getloadavg()[0], 2))
        writes = write_path(embedder, info, work / "w", args.write_n, args.batch_size)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    local = (first["images_per_s"] + second["images_per_s"]) / 2
    result = {
        "command": " ".join(["python -m bench.ray_ingest_bench", *sys.argv[1:]]),
        "model": args.model, "weights": "random (the real architecture and size)",
        "batch_size": args.batch_size, "decode_threads": args.workers,
        "torch_threads": torch.get_num_threads(), "ray_num_cpus": args.cpus,
        "ray_actors": args.actors, "files_per_task": args.files_per_task,
        "photos": args.n, "photo_size": "1024x768 JPEG",
        "mean_photo_kb": round(photo_bytes / args.n / 1024, 1),
        "in_process_before": first, "ray": ray_run, "in_process_after": second,
        "ray_over_in_process": round(ray_run["images_per_s"] / local, 3),
        "ray_over_in_process_after_ray_start": round(
            ray_run["images_per_s_after_ray_start"] / local, 3),
        "ray_over_in_process_per_cpu_s": round(ray_run["images_per_cpu_s"] / (
            (first["images_per_cpu_s"] + second["images_per_cpu_s"]) / 2), 3),
        "target": 0.8,
        "driver_write_path": writes,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip()
                   + f", {os.cpu_count()} cores, {torch.get_num_threads()} torch threads",
        "load_average_1m": load,
        "note": "shared 2-core machine under load from other agents (load_average_1m before "
                "and after each run); compare only the ratios, measured in the same run",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

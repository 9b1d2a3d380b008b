"""BLIP presets on this machine: ingest speed, query + rerank from cached tokens vs reading
the images, and bytes per image, per preset size.

    python -m bench.blip_bench                    # writes bench/results/blip_bench.json
    python -m bench.blip_bench --sizes base large --images 100

Models have random weights of the published architectures (no downloads here): blip-base
is ViT-B/16 at 384 px + BERT-base text (Salesforce/blip-itm-base-coco), blip-large
ViT-L/16 at 384 px + BERT-base (blip-itm-large-coco). The compute is that of real weights;
scores are meaningless. Per size, one run measures:

- ingest: photo-sized JPEGs (640 x 480) through the in-process runner (decode workers, the
  bf16 image-tower copy on CPUs with native bf16, Qdrant Edge writes), images per second,
  and the runner's own time split (decode / embed / write);
- a text query + rerank at k = 20: the client's search without rerank (text encoding +
  kNN), the same with the cached-token reranker (reads 20 token sets from the store, one
  ITM pass), and BLIP ITM reading the 20 images (decode + vision forward + ITM), timed
  alternately so both see the same load;
- bytes per image: the tokens' nominal size, and the store folder per image right after
  the ingest (segments + Qdrant Edge's write-ahead log, which it trims later: with 60
  images, 5.6 MB per image right after the ingest, and 52 MB of segments, 0.87 MB per
  image, plus 47 MB of log once the rerank runs were done).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.rerank_bench import make_photos, paired
from twinrank.ingest import IngestConfig, run_ingest
from twinrank.ingest.collection import collection_info
from twinrank.ingest.report import IngestReport
from twinrank.models.blip import BlipTwinModel
from twinrank.models.blip_random import random_blip
from twinrank.models.encode import ImageEmbedder, choose_dtype
from twinrank.rerank.base import Candidate
from twinrank.rerank.itm import BlipItmReranker
from twinrank.search import SearchClient
from twinrank.store import open_store

QUERY = "a dog running on the beach next to a red ball"
RESULTS = Path(__file__).parent / "results" / "blip_bench.json"
K = 20


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def bench_size(size: str, photos: Path, count: int, repeats: int, work: Path) -> dict[str, Any]:
    retrieval, processor = random_blip(size)
    model = BlipTwinModel(retrieval, processor, f"blip:random-{size}", f"blip:random-{size}:0")
    params = sum(p.numel() for p in model.parameters())
    store_path = work / f"store-{size}"
    store = open_store(store_path, collection_info(model))
    embedder = ImageEmbedder(model)
    report = IngestReport()
    started = time.perf_counter()
    run_ingest(IngestConfig(root=photos, progress=False, batch_size=8), embedder, store, report)
    ingest_s = time.perf_counter() - started
    store.flush()
    row: dict[str, Any] = {
        "preset_size": size, "params_million": round(params / 1e6, 1),
        "image_size": model.image_size, "token_shape": list(model.token_shape),
        "ingest_dtype": str(choose_dtype(model)).replace("torch.", ""),
        "ingest_images": report.embedded, "ingest_s": round(ingest_s, 1),
        "ingest_img_per_s": round(report.embedded / ingest_s, 2),
        "ingest_stage_s": {k: round(v, 1) for k, v in report.stage_seconds.items()},
        "cached_token_bytes_per_image": store.info.bytes_per_image(),
        "store_disk_bytes_per_image": folder_bytes(store_path) // max(count, 1),
    }
    print(json.dumps(row), flush=True)
    with SearchClient(store, model=model, reranker="fused") as client:
        hits = list(client.search(QUERY, k=K, rerank=False))
        candidates = [Candidate(h.id, h.path) for h in hits]
        itm = BlipItmReranker(retrieval, processor, device="cpu", batch_size=10)
        rerank_vs_plain = paired(lambda: client.search(QUERY, k=K),
                                 lambda: client.search(QUERY, k=K, rerank=False), repeats)
        cached_vs_images = paired(lambda: client.search(QUERY, k=K),
                                  lambda: itm.score(QUERY, candidates), repeats)
        read = [time.perf_counter()]
        client.store.get_tokens([h.id for h in hits])
        read.append(time.perf_counter())
    row.update({
        "k": K,
        "query_no_rerank_ms": round(rerank_vs_plain["baseline_ms"], 1),
        "query_rerank_cached_ms": round(rerank_vs_plain["ms"], 1),
        "rerank_cached_over_no_rerank": round(rerank_vs_plain["ratio"], 2),
        "rerank_reading_images_ms": round(cached_vs_images["baseline_ms"], 1),
        "query_rerank_cached_ms_paired_with_images": round(cached_vs_images["ms"], 1),
        "reading_images_over_cached": round(1 / cached_vs_images["ratio"], 2),
        "store_read_20_token_sets_ms": round((read[1] - read[0]) * 1000.0, 1),
    })
    store.close()
    print(json.dumps(row), flush=True)
    return row


def run(sizes: list[str], count: int, repeats: int, threads: int | None) -> dict[str, Any]:
    if threads:
        torch.set_num_threads(threads)
    logging.getLogger("twinrank").setLevel(logging.ERROR)
    work = Path(tempfile.mkdtemp(prefix="blip_bench_"))
    (work / "photos").mkdir()
    make_photos(work / "photos", count)
    rows = [bench_size(size, work / "photos", count, repeats, work) for size in sizes]
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    return {
        "command": "python -m bench.blip_bench " + " ".join(sys.argv[1:]),
        "measured_under_load": "yes: a 2-core machine shared with up to seven other engineers' "
                               "tests; compare rows and the paired ratios, not absolute times "
                               "with another run",
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
                    "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__,
                    "gpu": "none in this session (GPU figures not measured)"},
        "weights": "random, of the published sizes (no download possible here)",
        "photos": {"count": count, "size": [640, 480], "format": "JPEG q90"},
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["base"], choices=["base", "large"])
    parser.add_argument("--images", type=int, default=100, help="photo-sized JPEGs to ingest")
    parser.add_argument("--repeats", type=int, default=3, help="paired runs per comparison")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = run(args.sizes, args.images, args.repeats, args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

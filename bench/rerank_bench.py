"""Reranking cost at k = 20, 50, 100: cached tokens vs recomputed tokens vs a BLIP-sized
cross-encoder, all measured in one run on this machine.

    python -m bench.rerank_bench            # writes bench/results/rerank_bench.json

Models have random weights (no downloads here); the compute is the same as with real
weights. The three rerankers score the same k candidates for one text query:

- ``fused_cached``: FusedReranker over tokens cached in Qdrant Edge at ingest (ViT-B-32
  towers, token_grid=4: 16 tokens x 256 per image): store read + one text encoding + head.
- ``fused_recompute``: the same reranker with no cached tokens: every candidate file is
  decoded and run through the image tower, then the head.
- ``blip_itm``: BLIP ITM at its default (base) size, ViT-B/16 at 384 px: decode + image
  tower + cross-attending text encoder for every pair (BlipItmReranker, batched).

Also measured: one query's text encoding (the baseline the target is stated against) and
BLIP's image -> text direction (one image, k captions, image encoded once).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from twinrank.ingest import IngestConfig, run_ingest
from twinrank.ingest.collection import collection_info
from twinrank.models import create_model
from twinrank.models.encode import ImageEmbedder
from twinrank.rerank import BlipItmReranker, FusedReranker
from twinrank.search import SearchClient
from twinrank.search.hits import Hit
from twinrank.store import open_store

QUERY = "a small red circle left of a large blue square"
RESULTS = Path(__file__).parent / "results" / "rerank_bench.json"


def timed(fn: Callable[[], object], repeats: int, warm_up: bool = True) -> float:
    """Median wall time in ms over ``repeats`` runs, after one warm-up run if asked."""
    if warm_up:
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(times)


def paired(first: Callable[[], object], second: Callable[[], object], repeats: int) -> dict:
    """Both timed alternately, so both see the same load; the ratio is the median of pairs."""
    first(), second()
    a, b = [], []
    for _ in range(repeats):
        for fn, times in ((first, a), (second, b)):
            started = time.perf_counter()
            fn()
            times.append((time.perf_counter() - started) * 1000.0)
    ratios = [x / y for x, y in zip(a, b, strict=True)]
    return {"ms": statistics.median(a), "baseline_ms": statistics.median(b),
            "ratio": statistics.median(ratios)}


def make_photos(folder: Path, count: int, size: tuple[int, int] = (640, 480)) -> None:
    """Photo-sized JPEGs (random smooth blocks), so decode costs what a real photo costs."""
    rng = np.random.default_rng(0)
    for i in range(count):
        blocks = rng.integers(0, 255, (12, 16, 3)).astype(np.uint8)
        image = Image.fromarray(blocks).resize(size, Image.Resampling.BILINEAR)
        image.save(folder / f"photo{i:03d}.jpg", quality=90)


def blip_base_reranker() -> BlipItmReranker:
    """BLIP ITM at BlipConfig's defaults (the base size), random weights, offline processor."""
    from transformers import (
        BertTokenizerFast,
        BlipConfig,
        BlipForImageTextRetrieval,
        BlipImageProcessor,
        BlipProcessor,
    )

    words = sorted(set(QUERY.split()) | {"two", "green", "yellow", "triangle", "right", "of"})
    vocab = Path(tempfile.mkdtemp()) / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    processor = BlipProcessor(BlipImageProcessor(), BertTokenizerFast(vocab_file=str(vocab)))
    torch.manual_seed(0)
    model = BlipForImageTextRetrieval(BlipConfig()).eval()
    return BlipItmReranker(model, processor, device="cpu", batch_size=10, source="blip-base-random")


def run(ks: list[int], repeats: int, heavy_repeats: int, threads: int | None) -> dict:
    if threads:
        torch.set_num_threads(threads)
    # the recompute path is on purpose
    logging.getLogger("twinrank.rerank.fused").setLevel(logging.ERROR)
    work = Path(tempfile.mkdtemp(prefix="rerank_bench_"))
    (work / "photos").mkdir()
    make_photos(work / "photos", max(ks))
    model = create_model("ViT-B-32", device="cpu")
    store = open_store(work / "store", collection_info(model, "ViT-B-32"))
    run_ingest(IngestConfig(root=work / "photos", progress=False), ImageEmbedder(model), store)
    client = SearchClient(store, model=model, reranker=None)
    hits: list[Hit] = list(client.search(QUERY, k=max(ks), rerank=False))
    # random weights: this measures cost, not quality, so the untrained head is allowed
    cached = FusedReranker(model, store, allow_untrained=True)
    recompute = FusedReranker(model, None, allow_untrained=True)
    blip = blip_base_reranker()

    def encode_text() -> None:
        with torch.inference_mode():
            model.encode_text(model.tokenize([QUERY]))

    def head_only(top: list[Hit]) -> None:
        tokens = torch.from_numpy(np.stack([t[h.id] for h in top]).astype(np.float32))  # (k,T,W)
        with torch.inference_mode():
            model.match_logit(text.text_tokens.expand(len(top), -1, -1),
                              text.text_mask.expand(len(top), -1), tokens)

    with torch.inference_mode():
        text = model.encode_text(model.tokenize([QUERY]))
    t = store.get_tokens([h.id for h in hits])
    text_ms = timed(encode_text, repeats * 2)
    recompute.score(QUERY, hits[:2])  # warm the slow paths once, not once per k
    blip.score(QUERY, hits[:2])
    rows = []
    for k in ks:
        top = hits[:k]
        against_text = paired(lambda top=top: cached.score(QUERY, top), encode_text, repeats)
        row = {
            "k": k,
            "fused_cached_ms": against_text["ms"],
            "text_encoding_ms_paired": against_text["baseline_ms"],
            "cached_vs_text_encoding": against_text["ratio"],
            "head_only_ms": timed(lambda top=top: head_only(top), repeats),
            "store_read_ms": timed(lambda top=top: store.get_tokens([h.id for h in top]), repeats),
            "fused_recompute_ms": timed(lambda top=top: recompute.score(QUERY, top),
                                        heavy_repeats, warm_up=False),
            "blip_itm_ms": timed(lambda top=top: blip.score(QUERY, top), heavy_repeats,
                                 warm_up=False),
        }
        for name in ("fused_cached", "fused_recompute", "blip_itm"):
            row[f"{name}_pairs_per_s"] = k / row[f"{name}_ms"] * 1000.0
        row["cached_vs_blip"] = row["fused_cached_ms"] / row["blip_itm_ms"]
        row["recompute_vs_cached"] = row["fused_recompute_ms"] / row["fused_cached_ms"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    captions = [QUERY] * ks[0]
    image = Image.open(hits[0].path).convert("RGB")
    blip_i2t_ms = timed(lambda: blip.score_captions(image, captions), heavy_repeats,
                        warm_up=False)
    at_20 = next(r for r in rows if r["k"] == 20) if 20 in ks else rows[0]
    client.close()
    return {
        "command": "python -m bench.rerank_bench " + " ".join(sys.argv[1:]),
        "measured_under_load": "yes: a 2-core machine shared with five other engineers; "
                               "read ratios (same run) rather than absolute times",
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "gpu": "none in this session (GPU figures not measured)"},
        "model": {"towers": "ViT-B-32 (random weights)", "token_grid": model.config.token_grid,
                  "tokens_per_image": model.config.image_token_count,
                  "token_width": model.config.fusion.width},
        "cached_token_bytes_per_image": store.info.bytes_per_image(),
        "text_encoding_ms": text_ms,
        "blip_i2t_image_once_ms": {"k": len(captions), "ms": blip_i2t_ms},
        "rows": rows,
        "targets_at_k20": {
            "cached <= 1/50 of blip": at_20["cached_vs_blip"] <= 1 / 50,
            "cached <= 2x text encoding": at_20["cached_vs_text_encoding"] <= 2.0,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[20, 50, 100])
    parser.add_argument("--repeats", type=int, default=7, help="runs of the fast paths")
    parser.add_argument("--heavy-repeats", type=int, default=1, help="runs of the slow paths")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = run(args.ks, args.repeats, args.heavy_repeats, args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=2))


if __name__ == "__main__":
    main()

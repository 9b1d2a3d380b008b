"""What ingest's JPEG draft decoding costs in score and saves in time, on camera photos.

    python -m bench.decode_bench        # writes bench/results/decode_bench.json
    python -m bench.decode_bench --photos 2 --repeats 1 --out /tmp/d.json  # a smoke run

Ingest may decode a JPEG at 1/2, 1/4 or 1/8 scale (Pillow's ``draft``, libjpeg's DCT
scaling) before the model's own resize. Those pixels are not a full decode shrunk, so the
stored vectors and tokens move away from the reference preprocessing of the same file
(open_clip's ``create_model_and_transforms(...)[2]``, ``BlipProcessor``), and away from a
reranker that re-reads the file. Per option (draft to keep the short side at 1x, 2x or 4x
the model input, or a full decode) and model (random ViT-B-32 at 224 px, random BLIP-base
at 384 px, both of the real geometry; weights random, so the sizes of the deviations are
those of random weights), on photo-like JPEGs of 12 and 24 megapixels (some stored
sideways with an EXIF orientation) and of 1024 x 768:

- decode speed: ``decode_image`` + the model's PIL preprocessing (what one ingest decode
  worker does), images per second on one thread per kind of photo, median of the rounds
  (options alternate within a round, so they see the same load);
- pixels: largest and mean difference from the reference's normalised pixels;
- bi-encoder: the largest |cosine difference| to three query vectors, and the largest
  distance between the stored and reference image vectors (a bound for any query);
- rerank: the match logit over ingest's fp16 tokens against the logit over the
  reference's fp32 tokens (a reader of the file), beside the fp16 rounding alone.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from bench import cpu_name
from twinrank.models import images
from twinrank.models.encode import ImageEmbedder, decode_size

RESULTS = Path(__file__).parent / "results" / "decode_bench.json"
QUERIES = ["a dog on the beach", "a red car parked by a wall", "two people at a table"]
# (stored width, height, EXIF orientation): a 12 MP camera, a phone held upright (stored
# sideways, turned by EXIF), a 24 MP camera, and the 1024 x 768 photos of ingest_bench
PHOTO_SHAPES = [(4000, 3000, 1), (4032, 3024, 6), (6000, 4000, 1), (1024, 768, 1)]


def camera_photo(size: tuple[int, int], seed: int) -> Image.Image:
    """A photo-like RGB image: a sky-to-ground gradient, soft colour patches, luminance
    texture at four scales, hard-edged objects, thin dark strokes and sensor grain."""
    rng = np.random.default_rng(seed)
    width, height = size

    def field(cell: int, channels: int) -> np.ndarray:  # smooth noise, (height, width, c)
        small = rng.normal(0, 1, (max(2, height // cell), max(2, width // cell), channels))
        return np.stack([np.asarray(Image.fromarray(small[..., c].astype(np.float32), "F")
                                    .resize((width, height), Image.Resampling.BICUBIC))
                         for c in range(channels)], axis=-1)

    y = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    top, bottom = rng.uniform(40, 220, 3), rng.uniform(20, 200, 3)
    pixels = (top * (1 - y) + bottom * y).astype(np.float32) + 20 * field(300, 3)
    pixels += 18 * field(120, 1) + 12 * field(30, 1) + 8 * field(8, 1) + 6 * field(3, 1)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(15, 30))):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1 = x0 + int(rng.integers(width // 40, width // 4))
        y1 = y0 + int(rng.integers(height // 40, height // 4))
        fill = tuple(int(v) for v in rng.integers(0, 255, 3))
        kind = int(rng.integers(0, 3))
        if kind == 2:
            draw.line([x0, y0, x1, y1], fill=fill, width=int(rng.integers(2, 20)))
        else:
            (draw.ellipse if kind == 0 else draw.rectangle)([x0, y0, x1, y1], fill=fill)
    for _ in range(6):  # text-like rows of thin strokes
        x0, y0 = int(rng.integers(0, width - width // 8)), int(rng.integers(0, height - 60))
        for k in range(0, width // 8, 7):
            draw.line([x0 + k, y0, x0 + k, y0 + height // 40], fill=(15, 15, 15), width=2)
    grain = rng.normal(0, 3, (height, width, 1)).astype(np.float32)
    return Image.fromarray(np.clip(np.asarray(image, np.float32) + grain, 0, 255).astype(np.uint8))


def camera_jpeg(size: tuple[int, int], seed: int, orientation: int = 1,
                quality: int = 92) -> bytes:
    """``camera_photo`` as a camera writes it: JPEG, 4:2:0 chroma, an EXIF orientation."""
    exif = Image.Exif()
    exif[images.EXIF_ORIENTATION] = orientation
    buffer = io.BytesIO()
    camera_photo(size, seed).save(buffer, "JPEG", quality=quality, subsampling="4:2:0",
                                  exif=exif)
    return buffer.getvalue()


@contextlib.contextmanager
def draft_margin(margin: int) -> Iterator[None]:
    """Decode with another ``images.DRAFT_MARGIN`` (this benchmark's options)."""
    kept = images.DRAFT_MARGIN
    images.DRAFT_MARGIN = margin
    try:
        yield
    finally:
        images.DRAFT_MARGIN = kept


def ingest_arrays(embedder: ImageEmbedder, photos: list[bytes], margin: int | None,
                  size: int) -> tuple[list[np.ndarray], list[float]]:
    """What ingest's decoders hand the model for ``photos``, and the seconds each took."""
    target = None if margin is None else size
    arrays, seconds = [], []
    with draft_margin(margin or 1):
        for data in photos:
            began = time.perf_counter()
            arrays.append(embedder.prepare(images.decode_image(data, target).image))
            seconds.append(time.perf_counter() - began)
    return arrays, seconds


def models() -> list[tuple[str, Any, Any, list[int | None]]]:
    """(name, model, reference transform, draft margins to try; None: a full decode)."""
    import open_clip

    from twinrank.models import create_model
    from twinrank.models.blip_random import save_random_blip

    clip = create_model("ViT-B-32", device="cpu")
    reference = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)[2]
    folder = Path(tempfile.mkdtemp(prefix="decode-bench-")) / "blip-base"
    blip = create_model(f"blip:{save_random_blip(folder, 'base', init_std=0.05)}", device="cpu")
    processor = blip.processor.image_processor

    def blip_reference(image: Image.Image) -> torch.Tensor:
        pixels: torch.Tensor = processor(image, return_tensors="pt")["pixel_values"][0]
        return pixels

    return [("open_clip ViT-B-32, 224 px", clip, reference, [1, 2, 4, None]),
            ("BLIP base, 384 px (init_std 0.05)", blip, blip_reference, [1, 2, None])]


@torch.inference_mode()
def deviations(model: Any, embedder: ImageEmbedder, arrays: list[np.ndarray],
               reference: torch.Tensor, ref_encoding: Any, text: Any) -> dict[str, float]:
    pixels = embedder.pixels_from_arrays(arrays)
    vectors, tokens = embedder.embed_arrays(arrays)  # as stored: fp32 vectors, fp16 tokens
    ref_vectors = ref_encoding.image_vector.numpy()
    cosines, ref_cosines = vectors @ text.text_vector.numpy().T, ref_vectors @ \
        text.text_vector.numpy().T  # (photos, queries)
    cached = match_logits(model, text, torch.from_numpy(tokens).float())
    read = match_logits(model, text, ref_encoding.image_tokens)
    return {"pixel_max_abs": round(float((pixels - reference).abs().max()), 4),
            "pixel_mean_abs": round(float((pixels - reference).abs().mean()), 5),
            "cosine_max_dev": float(f"{np.abs(cosines - ref_cosines).max():.2e}"),
            "vector_max_distance": float(
                f"{np.linalg.norm(vectors - ref_vectors, axis=1).max():.2e}"),
            "rerank_max_dev": float(f"{np.abs(cached - read).max():.2e}")}


def match_logits(model: Any, text: Any, image_tokens: torch.Tensor) -> np.ndarray:
    """Match logits (queries, photos) over ``image_tokens`` (photos, T, W)."""
    n = image_tokens.shape[0]
    rows = [model.match_logit(text.text_tokens[q:q + 1].expand(n, *text.text_tokens.shape[1:]),
                              text.text_mask[q:q + 1].expand(n, -1), image_tokens).float()
            for q in range(text.text_tokens.shape[0])]
    return torch.stack(rows).numpy()


def measure(name: str, model: Any, reference: Any, margins: list[int | None],
            photos: list[bytes], kinds: list[str], repeats: int) -> dict[str, Any]:
    """One model's options; decode speed per kind of photo (``kinds``, one per photo)."""
    embedder = ImageEmbedder(model, precision="fp32")
    size = int(model.image_size)
    ref_pixels = torch.stack([reference(images.open_image(data)) for data in photos])
    with torch.inference_mode():
        ref_encoding = model.encode_image(ref_pixels)
        text = model.encode_text(model.tokenize(QUERIES))
        fp16 = match_logits(model, text, ref_encoding.image_tokens.half().float())
        floor = np.abs(fp16 - match_logits(model, text, ref_encoding.image_tokens)).max()
    rates: dict[tuple[int | None, str], list[float]] = {}
    arrays: dict[int | None, list[np.ndarray]] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one decode worker (BLIP's resize runs torch ops)
    try:
        for _ in range(repeats):
            for margin in margins:
                arrays[margin], seconds = ingest_arrays(embedder, photos, margin, size)
                for kind in set(kinds):
                    took = [s for s, k in zip(seconds, kinds, strict=True) if k == kind]
                    rates.setdefault((margin, kind), []).append(len(took) / sum(took))
    finally:
        torch.set_num_threads(threads)
    chosen = decode_size(model)
    out = []
    for margin in margins:
        row = deviations(model, embedder, arrays[margin], ref_pixels, ref_encoding, text)
        out.append({"option": "full decode" if margin is None else f"draft to {margin}x",
                    "before": margin == 1,
                    "chosen": (margin is None) if chosen is None else
                    margin == images.DRAFT_MARGIN,
                    "decode_img_per_s": {kind: round(statistics.median(rates[margin, kind]), 1)
                                         for kind in dict.fromkeys(kinds)},
                    **row})
    return {"model": name, "input_size": size, "fp16_token_rounding_rerank_dev":
            float(f"{floor:.2e}"), "options": out}




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.manual_seed(0)
    shapes = [PHOTO_SHAPES[i % len(PHOTO_SHAPES)] for i in range(args.photos)]
    photos = [camera_jpeg((w, h), seed=i, orientation=o) for i, (w, h, o) in enumerate(shapes)]
    kinds = [f"{w}x{h}" + (f" EXIF {o}" if o != 1 else "") for w, h, o in shapes]
    load = os.getloadavg()[0]
    results = [measure(name, model, reference, margins, photos, kinds, args.repeats)
               for name, model, reference, margins in models()]
    command = "python -m bench.decode_bench" + (
        f" --photos {args.photos}" if args.photos != 8 else "") + (
        f" --repeats {args.repeats}" if args.repeats != 3 else "")
    report = {
        "command": command,
        "cpu": cpu_name(), "cores": torch.get_num_threads(),
        "load_average_1min": {"start": round(load, 1), "end": round(os.getloadavg()[0], 1)},
        "measured_under_load": "a 2-core machine shared with other engineers' work: compare "
                               "options within this run, not with another run's figures",
        "photos": [{"stored": [w, h], "exif_orientation": o, "megapixels": round(w * h / 1e6, 1),
                    "bytes": len(data)} for (w, h, o), data in zip(shapes, photos, strict=True)],
        "decode": "decode_image + the model's PIL preprocessing, one thread",
        "weights": "random (no downloads here): deviations are those of random weights",
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

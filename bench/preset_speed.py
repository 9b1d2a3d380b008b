"""Image-tower speed of each preset's architecture on this CPU, in one run (random weights
of the real sizes; the compute is the same as with the published weights).

    python -m bench.preset_speed                  # writes bench/results/preset_speed.json
    python -m bench.preset_speed --rounds 1 --batch 4 --out /tmp/p.json  # a quick look

Each tower runs in the precision ingest picks here (bf16 weights on a CPU with native
bf16, else fp32; ``models.encode.choose_dtype``), on preprocessed tensors, in alternating
rounds so a change in machine load hits every tower alike. Reported per tower: images
per second (wall) and per CPU-second of this process (less distorted by other load), and
the hours 10,000 photos would take at the median wall rate. Decoding JPEGs is not
included (ingest overlaps it with the forward on other threads).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from bench import cpu_name
from twinrank.models.encode import cpu_has_native_bf16

RESULTS = Path(__file__).parent / "results" / "preset_speed.json"


def open_clip_tower(name: str) -> tuple[Callable[[torch.Tensor], object], int]:
    from twinrank.models import create_model

    model = create_model(name, device="cpu")
    return model.clip.visual, model.image_size


def blip_tower(large: bool) -> tuple[Callable[[torch.Tensor], object], int]:
    from transformers import BlipConfig
    from transformers.models.blip.modeling_blip import BlipVisionModel

    vision = BlipConfig().vision_config  # transformers' default BLIP is the base size
    if large:
        vision.hidden_size, vision.num_hidden_layers = 1024, 24
        vision.num_attention_heads, vision.intermediate_size = 16, 4096
    return BlipVisionModel(vision).eval(), int(vision.image_size)


TOWERS: dict[str, Callable[[], tuple[Callable[[torch.Tensor], object], int]]] = {
    "clip-b32 (ViT-B-32, 224 px)": lambda: open_clip_tower("ViT-B-32"),
    "ViT-B-16 (224 px, for comparison)": lambda: open_clip_tower("ViT-B-16"),
    "blip-base (ViT-B/16, 384 px)": lambda: blip_tower(large=False),
    "blip-large (ViT-L/16, 384 px)": lambda: blip_tower(large=True),
}


@torch.inference_mode()
def time_tower(tower: Callable[[torch.Tensor], object], pixels: torch.Tensor) -> tuple[float,
                                                                                      float]:
    """(seconds wall, seconds of this process's CPU) for one forward of ``pixels``."""
    wall, cpu = time.perf_counter(), time.process_time()
    tower(pixels)
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=None, help="tower names to run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    towers = {}
    for name, build in TOWERS.items():
        if args.only and not any(part in name for part in args.only):
            continue
        tower, size = build()
        module = tower if isinstance(tower, torch.nn.Module) else None
        if module is not None:
            module.to(dtype)
        pixels = torch.randn(args.batch, 3, size, size).to(dtype)
        time_tower(tower, pixels)  # warm-up
        towers[name] = (tower, pixels)
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in towers}
    for _ in range(args.rounds):  # alternate, so load changes hit every tower alike
        for name, (tower, pixels) in towers.items():
            samples[name].append(time_tower(tower, pixels))
    rows: dict[str, dict[str, float]] = {}
    first = None
    for name, runs in samples.items():
        wall = float(np.median([args.batch / w for w, _ in runs]))
        per_cpu = float(np.median([args.batch / max(c, 1e-9) for _, c in runs]))
        first = first or wall
        rows[name] = {"images_per_s": round(wall, 2), "images_per_cpu_s": round(per_cpu, 2),
                      "speed_vs_clip_b32": round(wall / first, 3),
                      "hours_for_10000_photos": round(10_000 / wall / 3600, 2)}
    result: dict[str, object] = {
        "command": "python -m bench.preset_speed " + " ".join(argv or sys.argv[1:]),
        "cpu": cpu_name(), "threads": args.threads, "dtype": str(dtype).removeprefix("torch."),
        "batch": args.batch, "rounds": args.rounds, "towers": rows,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "note": "random weights of the real sizes; image tower only (no JPEG decoding); "
                "on a shared 2-core machine (see load_average_1m), so compare the towers "
                "with each other, not with other runs",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(rows, indent=2))
    return result


if __name__ == "__main__":
    main()

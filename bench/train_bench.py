"""What JOINT costs: its parameters against SEP's, its training step against a bi-encoder's.

ViT-B-32-sized towers with random weights (the compute is the same as with real weights),
one fixed batch, steps alternated so machine load hits both alike; the median is reported.
Targets (issue 4): JOINT params <= 0.6x SEP's; JOINT step <= 1.3x a bi-encoder-only step.

    python -m bench.train_bench --batch-size 8 --repeats 5 --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from twinrank.models import create_model
from twinrank.models.pair import SepTwinModel
from twinrank.train.objectives import LossWeights, build_models, compute_losses

RESULT = Path(__file__).parent / "results" / "train_bench.json"


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def step_seconds(mode: str, models: torch.nn.ModuleDict, batch: tuple, seed: int) -> float:
    optimizer = torch.optim.AdamW(models.parameters(), lr=1e-5)
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    losses = compute_losses(mode, models, *batch, LossWeights(), generator)
    sum(losses.values()).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    joint = create_model(args.model, device="cpu")
    sep = SepTwinModel.from_pair(joint, create_model(args.model, device="cpu", seed=1))
    params = {"joint": count(joint), "sep": count(sep), "towers": count(joint.towers),
              "fusion_head": count(joint.head)}
    size = joint.config.image_size
    captions = [f"a photo of {n} red cubes left of a blue ball" for n in range(args.batch_size)]
    batch = (torch.randn(args.batch_size, 3, size, size), joint.tokenize(captions),
             torch.arange(args.batch_size))
    models = build_models("joint", joint).train()
    times: dict[str, list[float]] = {"joint": [], "bi": []}
    for repeat in range(args.repeats + 1):  # the first round warms up
        for mode in ("bi", "joint"):
            seconds = step_seconds(mode, models, batch, repeat)
            if repeat:
                times[mode].append(seconds)
    median = {mode: statistics.median(values) for mode, values in times.items()}
    result = {
        "command": "python -m bench.train_bench " + " ".join(sys.argv[1:] if argv is None
                                                             else argv),
        "model": args.model, "batch_size": args.batch_size, "threads": args.threads,
        "params": params, "param_ratio_joint_vs_sep": params["joint"] / params["sep"],
        "step_seconds_median": median, "step_seconds_all": times,
        "step_ratio_joint_vs_bi": median["joint"] / median["bi"],
        "targets": {"param_ratio_max": 0.6, "step_ratio_max": 1.3},
        "note": "CPU (2 cores) shared with other jobs; ratios from alternated steps",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("param_ratio_joint_vs_sep",
                                             "step_ratio_joint_vs_bi", "step_seconds_median")}))
    return result


if __name__ == "__main__":
    main()

"""Training checkpoints: everything a resumed run needs to continue bit for bit.

A checkpoint holds the models, the optimiser, the schedule, the fp16 grad scaler, the
validation history and the step reached; ``best.pt`` holds the weights that did best on the
validation split. The data order and the negative sampling depend only on (seed, step), so
no sampler state is needed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"step-(\d+)\.pt$")


def checkpoint_path(out: Path, step: int) -> Path:
    return Path(out) / CHECKPOINT_DIR / f"step-{step:07d}.pt"


def latest_checkpoint(out: Path) -> Path | None:
    """The checkpoint with the highest step under ``out/checkpoints``, or None."""
    folder = Path(out) / CHECKPOINT_DIR
    found = [(int(m.group(1)), p) for p in folder.glob("step-*.pt") if (m := _NAME.search(p.name))]
    return max(found)[1] if found else None


def save_checkpoint(out: Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``state`` atomically as step ``step``; keep only the newest ``keep`` files."""
    path = checkpoint_path(out, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save(state, partial)
    partial.replace(path)
    older = sorted(path.parent.glob("step-*.pt"))[:-keep] if keep > 0 else []
    for old in older:
        old.unlink()
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError) as error:
        raise ValueError(f"cannot read checkpoint {path}: {error}; delete it to resume from "
                         "the one before, or start without --resume") from error
    return state


BEST_FILE = "best.pt"


def save_best(out: Path, step: int, models_state: dict[str, Any]) -> Path:
    """Keep the weights that did best on the validation split (``checkpoints/best.pt``),
    so the run can end on them however later steps fare."""
    path = Path(out) / CHECKPOINT_DIR / BEST_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save({"step": step, "models": models_state}, partial)
    partial.replace(path)
    return path


def load_best(out: Path, step: int) -> dict[str, Any]:
    """The models' state saved by ``save_best`` at ``step``; a clear error if it is gone."""
    path = Path(out) / CHECKPOINT_DIR / BEST_FILE
    state = load_checkpoint(path) if path.is_file() else {}
    if state.get("step") != step:
        raise ValueError(f"{path} should hold the weights of step {step}, the best on the "
                         f"validation split, but holds {state.get('step')}; train again "
                         "(or with --no-keep-best)")
    models: dict[str, Any] = state["models"]
    return models

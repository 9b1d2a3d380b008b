"""The fine-tuning loop: read it top to bottom.

    config = TrainConfig(data=("scenes:data/scenes:train:en",), out=Path("runs/joint"))
    result = train(config)          # runs/joint/ is a model folder ingest/search/evaluate load

One optimiser step = ``accum_steps`` micro-batches, each scored by ``compute_losses`` (a
dict of named losses), summed, scaled and backpropagated. Warmup then cosine decay;
mixed precision on CUDA; seeded and deterministic on CPU; a checkpoint every N steps that
``resume=True`` continues from exactly; one JSON line of metrics every ``log_every`` steps.

A share of the training pictures is held out by group (``train.validation``), or a split
is given; every ``validate_every`` steps and at the end the run measures bi-encoder and
COOP@k recall there (``evaluation.validation``), ends on the weights that did best, and
writes what it found beside them (``validation.json``, read by ``models.evidence``).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from twinrank.captions.data import CaptionedImage, load_dataset
from twinrank.evaluation.validation import ValidationConfig, ValidationFigures, measure_validation
from twinrank.models import (
    TwinModel,
    create_model,
    pick_device,
    save_model,
    with_fusion_layers,
    with_image_size,
)
from twinrank.models.evidence import remove_evidence, write_evidence
from twinrank.train.batches import TrainingSet
from twinrank.train.checkpoints import (
    latest_checkpoint,
    load_best,
    load_checkpoint,
    save_best,
    save_checkpoint,
)
from twinrank.train.losses import total_loss
from twinrank.train.objectives import (
    LossWeights,
    build_models,
    compute_losses,
    exported_model,
    twins,
)
from twinrank.train.objectives import freeze_layers as freeze_tower_layers
from twinrank.train.validation import ValidationLog, ValidationSplit, given_split, hold_out

METRICS_FILE = "metrics.jsonl"
RECORD_FILE = "train.json"
MAX_LOGIT_SCALE = math.log(100.0)
SAVE_DTYPES = {"fp32": None, "fp16": torch.float16}


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; recorded next to the model it produced."""

    data: tuple[str, ...]
    out: Path
    model: str = "twinrank-scenes"
    pretrained: str | None = None
    mode: str = "joint"
    epochs: float = 10.0
    steps: int = 0  # optimiser steps; 0 means "from epochs"
    batch_size: int = 64
    accum_steps: int = 1
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_steps: int = 100
    contrastive_weight: float = 1.0
    match_weight: float = 1.0
    easy_negatives: float = 0.5  # share of match negatives drawn at random instead of mined
    rank_weight: float = 0.0  # listwise rank loss of the cross-encoder (0: off)
    rank_negatives: int = 7  # mined look-alikes per row in the rank loss
    freeze_layers: int = 0
    image_size: int = 0  # train at this picture size (0: the model's own)
    fusion_layers: int = 0  # grow the fusion head to this many layers (0: keep it)
    group_lookalikes: bool = True
    also_true: bool = True  # the data's also_true images are never a caption's negatives
    seed: int = 0
    device: str | None = None
    threads: int = 0  # CPU threads; 0 keeps torch's default. 1 is fastest on a busy CPU
    checkpoint_every: int = 0
    resume: bool = False
    log_every: int = 10
    save_dtype: str = "fp32"
    validation_fraction: float = 0.1  # of the training pictures, by group; 0: no validation
    validation_data: tuple[str, ...] = ()  # or a split given by specs (then nothing is held out)
    validation_max_images: int = 1000
    validate_every: int | None = None  # None: a tenth of the run, 100 steps at least; 0: at the end
    validation_ks: tuple[int, ...] = (5, 20)  # COOP@k measured on the validation split
    keep_best: bool = True  # end on the validated weights that did best
    progress: bool = True
    command: str = ""  # the command line that started the run, for the record

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("no training data given; pass --data scenes:DIR:train:en (or more)")
        if self.batch_size < 2 or self.accum_steps < 1:
            raise ValueError("batch_size must be >= 2 and accum_steps >= 1")
        if self.save_dtype not in SAVE_DTYPES:
            raise ValueError(f"save_dtype must be one of {sorted(SAVE_DTYPES)}")
        if not 0.0 <= self.validation_fraction < 1.0 or self.validation_max_images < 1:
            raise ValueError("validation_fraction must be in [0, 1) and validation_max_images "
                             ">= 1")
        if self.validate_every is not None and self.validate_every < 0:
            raise ValueError(f"validate_every must be >= 0, got {self.validate_every}")


@dataclass
class TrainResult:
    model_dir: Path
    steps: int
    seconds: float
    last_losses: dict[str, float] = field(default_factory=dict)
    resumed_from: int = 0  # the checkpoint step a resumed run started at
    chosen_step: int | None = None  # the validated step whose weights were saved


def train(config: TrainConfig) -> TrainResult:
    """Fine-tune a model as ``config`` says and save it as a model folder in ``config.out``."""
    device = pick_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    with _deterministic(device):
        return _train(config, device)


def _train(config: TrainConfig, device: torch.device) -> TrainResult:
    torch.manual_seed(config.seed)
    base = create_model(config.model, config.pretrained, device=device, seed=config.seed)
    if config.image_size:
        base = with_image_size(base, config.image_size)
    if config.fusion_layers:
        base = with_fusion_layers(base, config.fusion_layers)
    models = build_models(config.mode, base).train()
    for model in twins(models).values():
        freeze_tower_layers(model, config.freeze_layers)
    records, validation = _split(config)
    data = TrainingSet(records, base.preprocess, config.seed, config.group_lookalikes,
                       config.also_true)
    total_steps = config.steps or max(1, math.ceil(
        config.epochs * data.batches_per_epoch(config.batch_size) / config.accum_steps))
    loop = _Loop(config, models, data, device, total_steps, validation)
    return loop.run(base)


def _split(config: TrainConfig) -> tuple[list[CaptionedImage], ValidationSplit | None]:
    """The training records and the validation split: given, held out, or none."""
    records = [record for spec in config.data for record in load_dataset(spec)]
    if config.validation_data:
        given = [record for spec in config.validation_data for record in load_dataset(spec)]
        return records, given_split(config.validation_data, given, records)
    return hold_out(records, config.validation_fraction, config.validation_max_images)


class _Loop:
    """The state of one run: models, optimiser, schedule, scaler and the step reached."""

    def __init__(self, config: TrainConfig, models: nn.ModuleDict, data: TrainingSet,
                 device: torch.device, total_steps: int,
                 validation: ValidationSplit | None = None) -> None:
        self.config, self.models, self.data, self.device = config, models, data, device
        self.total_steps = total_steps
        self.validation = validation
        self.log = ValidationLog()
        every = config.validate_every
        self.validate_every = max(100, total_steps // 10) if every is None else every
        self.weights = LossWeights(config.contrastive_weight, config.match_weight,
                                   config.easy_negatives, config.rank_weight,
                                   config.rank_negatives)
        self.optimizer = torch.optim.AdamW(_param_groups(models, config.weight_decay),
                                           lr=config.lr, betas=(0.9, 0.98), eps=1e-6)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _warmup_cosine(config.warmup_steps, total_steps))
        self.amp_dtype = _amp_dtype(device)
        self.scaler = torch.amp.GradScaler(
            device.type, enabled=self.amp_dtype == torch.float16)
        self.step = 0
        self.last_lr = 0.0

    def run(self, base: TwinModel) -> TrainResult:
        out = Path(self.config.out)
        out.mkdir(parents=True, exist_ok=True)
        if self.config.resume:
            self._resume(out)
        resumed_from = self.step
        started, losses = time.perf_counter(), {}
        bar = tqdm(total=self.total_steps, initial=self.step, desc=f"train {self.config.mode}",
                   disable=not self.config.progress, unit="step")
        with (out / METRICS_FILE).open("a", encoding="utf-8") as log:
            while self.step < self.total_steps:
                tick = time.perf_counter()
                losses = self._optimizer_step(base)
                self.step += 1
                samples_per_s = self.config.batch_size * self.config.accum_steps / max(
                    time.perf_counter() - tick, 1e-9)
                bar.update(1)
                bar.set_postfix(loss=f"{sum(losses.values()):.3f}",
                                samples_s=f"{samples_per_s:.0f}")
                if self.step % self.config.log_every == 0 or self.step == self.total_steps:
                    log.write(json.dumps(self._metrics(losses, samples_per_s, started)) + "\n")
                    log.flush()
                if self._validates_now():
                    self._validate(out, bar)
                every = self.config.checkpoint_every
                if every and self.step % every == 0 and self.step < self.total_steps:
                    save_checkpoint(out, self.step, self._state())
        bar.close()
        chosen = self._end_on_best(out)
        model = exported_model(self.config.mode, self.models).eval()
        save_model(model, out, SAVE_DTYPES[self.config.save_dtype],
                   reranker_trained=self.trains_reranker)
        self._write_evidence(out)
        record = {"config": asdict(self.config) | {"out": str(self.config.out)},
                  "steps": self.total_steps, "images": len(self.data), "final_losses": losses,
                  "chosen_step": chosen}
        (out / RECORD_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")
        return TrainResult(out, self.total_steps, time.perf_counter() - started, losses,
                           resumed_from, chosen)

    def _validates_now(self) -> bool:
        every = self.validate_every
        return self.validation is not None and (
            self.step == self.total_steps or bool(every and self.step % every == 0))

    def _validate(self, out: Path, bar: tqdm) -> None:
        """Measure the model as it would be saved now; keep its weights if best so far."""
        assert self.validation is not None
        model = exported_model(self.config.mode, self.models).eval()
        try:
            with torch.random.fork_rng(devices=[]):  # training draws the same numbers
                found = measure_validation(model, self.validation.records, ValidationConfig(
                    ks=self.config.validation_ks, rerank=self.trains_reranker))
        finally:
            self.models.train()
        if self.log.add(self.step, found) and self.config.keep_best:
            save_best(out, self.step, self.models.state_dict())
        if self.config.progress:
            bar.write(_validation_line(self.step, found))

    def _end_on_best(self, out: Path) -> int | None:
        """Load the best validated weights (when they are not the last); their step."""
        best = self.log.best
        if best is None:
            return None
        if not self.config.keep_best:
            return self.step
        if best["step"] != self.step:
            self.models.load_state_dict(load_best(out, best["step"]))
        return int(best["step"])

    def _write_evidence(self, out: Path) -> None:
        """validation.json for the saved weights; none (not a stale one) when unmeasured."""
        if self.validation is None or self.log.best is None:
            remove_evidence(out)
            return
        evidence, details = self.log.evidence(self.validation.measured_on,
                                              last=not self.config.keep_best)
        write_evidence(out, evidence, **details)

    @property
    def trains_reranker(self) -> bool:
        """Whether this run trains the cross-encoder's match objective, so the saved model
        may rerank. A bi-only run moves the towers under an untouched head, whose scores
        then no longer fit the tokens: its reranker is recorded as untrained."""
        return self.config.mode != "bi" and self.config.match_weight > 0

    def _optimizer_step(self, base: TwinModel) -> dict[str, float]:
        config, summed = self.config, dict[str, float]()
        for micro in range(config.accum_steps):
            index = self.step * config.accum_steps + micro  # global micro-batch number
            per_epoch = self.data.batches_per_epoch(config.batch_size)
            batch = self.data.batch(index // per_epoch, index % per_epoch, config.batch_size)
            generator = torch.Generator().manual_seed(config.seed * 1_000_003 + index)
            with _autocast(self.device, self.amp_dtype):
                losses = compute_losses(
                    config.mode, self.models, batch.pixels.to(self.device),
                    base.tokenize(batch.captions).to(self.device),
                    (batch.image_ids if batch.positives is None
                     else batch.positives).to(self.device), self.weights, generator)
                loss = total_loss(losses) / config.accum_steps
            self.scaler.scale(loss).backward()
            for name, value in losses.items():
                summed[name] = summed.get(name, 0.0) + float(value.detach()) / config.accum_steps
        self.last_lr = float(self.optimizer.param_groups[0]["lr"])
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.models.parameters(), 1.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.schedule.step()
        with torch.no_grad():
            for model in twins(self.models).values():
                model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        return summed

    def _metrics(self, losses: dict[str, float], samples_per_s: float,
                 started: float) -> dict[str, Any]:
        per_epoch = self.data.batches_per_epoch(self.config.batch_size)
        scales = {f"{name}_logit_scale": float(model.logit_scale.detach().exp())
                  for name, model in twins(self.models).items() if self.config.mode != "cross"}
        return {"step": self.step, "epoch": self.step * self.config.accum_steps / per_epoch,
                "lr": self.last_lr, "loss": sum(losses.values()),
                **losses, **scales, "samples_per_s": samples_per_s,
                "elapsed_s": time.perf_counter() - started}

    def _state(self) -> dict[str, Any]:
        return {"step": self.step, "models": self.models.state_dict(),
                "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
                "scaler": self.scaler.state_dict(), "total_steps": self.total_steps,
                "mode": self.config.mode, "validation": self.log.state()}

    def _resume(self, out: Path) -> None:
        path = latest_checkpoint(out)
        if path is None:
            raise FileNotFoundError(f"--resume: no checkpoint under {out}/checkpoints; start "
                                    "without --resume (and with --checkpoint-every N)")
        state = load_checkpoint(path)
        if state["mode"] != self.config.mode or state["total_steps"] != self.total_steps:
            raise ValueError(f"{path} was written by a {state['mode']} run of "
                             f"{state['total_steps']} steps; resume with the same settings")
        self.models.load_state_dict(state["models"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.log = ValidationLog(state.get("validation"))


def _validation_line(step: int, found: ValidationFigures) -> str:
    """One line per validation: what the bi-encoder and the reranker reach, and the gain."""
    line = f"step {step} validation: bi t2i R@1 {found.figures['bi']['t2i_recall@1']:.1f}"
    coop = [name for name in found.figures if name.startswith("coop@")]
    if coop and found.reranker_gain is not None:
        line += (", " + ", ".join(f"{name} {found.figures[name]['t2i_recall@1']:.1f}"
                                  for name in coop)
                 + f" (bi_weight {found.bi_weight:g}; gain {found.reranker_gain:+.1f})")
    return line


def _param_groups(models: nn.ModuleDict, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only: not on biases, norms, embeddings' gains or the scale."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, parameter in models.named_parameters():
        if not parameter.requires_grad:
            continue
        plain = parameter.ndim < 2 or "logit_scale" in name or "embedding" in name
        (no_decay if plain or name.endswith(".cls") else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def _warmup_cosine(warmup: int, total: int) -> Any:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return factor


def _amp_dtype(device: torch.device) -> torch.dtype | None:
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@contextlib.contextmanager
def _autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    if dtype is None:
        yield
    else:
        with torch.autocast(device.type, dtype=dtype):
            yield


@contextlib.contextmanager
def _deterministic(device: torch.device) -> Iterator[None]:
    """Deterministic kernels on CPU for the run (with 2+ threads, some backward kernels are
    not otherwise), restoring the caller's setting after. Data order and negative sampling
    depend only on (seed, step)."""
    before = torch.are_deterministic_algorithms_enabled()
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)

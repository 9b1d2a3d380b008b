"""The validation split a training run measures itself on, and what it found there.

``hold_out`` keeps a share of the training pictures aside, by group: pictures that share
a look-alike key (the scenes' swapped bindings, Open Clip Art's near-duplicates) or are
one picture in several languages stay together, and the hash of the group's name decides
(``captions.splits``), so the split does not depend on the seed or the order of the data.
``ValidationLog`` keeps every measurement and the best one, and turns the best into the
model folder's evidence (``models.evidence``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from twinrank.captions.data import CaptionedImage
from twinrank.captions.splits import connected_groups, stable_unit
from twinrank.evaluation.validation import ValidationFigures
from twinrank.models.evidence import Evidence

SALT = "validation"
SELECTION = ("mean t2i R@1/5/10 of the order search would show: the best COOP@k at "
             "bi_weight when reranker_gain > 0, else the bi-encoder's")


@dataclass(frozen=True)
class ValidationSplit:
    records: list[CaptionedImage]  # one per picture, every caption it has
    measured_on: str


def by_picture(records: Sequence[CaptionedImage]) -> list[CaptionedImage]:
    """One record per image path with every caption of every language: a validation
    corpus must hold each picture once, or its other copy would count as a wrong answer.

    >>> by_picture([CaptionedImage(Path("a.png"), ("x",)),
    ...             CaptionedImage(Path("a.png"), ("y",), "de")])[0].captions
    ('x', 'y')
    """
    merged: dict[Path, CaptionedImage] = {}
    for record in records:
        path = Path(record.image_path)
        seen = merged.get(path)
        merged[path] = record if seen is None else replace(
            seen, captions=tuple(dict.fromkeys(seen.captions + record.captions)),
            lookalike_key=seen.lookalike_key or record.lookalike_key,
            also_true=tuple(dict.fromkeys(seen.also_true + record.also_true)))
    return list(merged.values())


def hold_out(records: Sequence[CaptionedImage], fraction: float,
             max_images: int = 1000) -> tuple[list[CaptionedImage], ValidationSplit | None]:
    """The training records left, and the validation split: ``fraction`` of the pictures
    (at most ``max_images``), in whole groups; at least one group when there are two.

    >>> train, split = hold_out(load_dataset("scenes:data/scenes:train"), 0.1)  # doctest: +SKIP
    """
    pictures = by_picture(records)
    if fraction <= 0 or len(pictures) < 2:
        return list(records), None
    share = min(fraction, max_images / len(pictures))
    groups = connected_groups([{f"image:{p.image_path}"} | (
        {f"lookalike:{p.lookalike_key}"} if p.lookalike_key else set()) for p in pictures])
    names = sorted(set(groups), key=lambda name: stable_unit(name, SALT))
    held = {name for name in names if stable_unit(name, SALT) < share} or set(names[:1])
    if len(held) == len(names):
        if len(names) < 2:
            return list(records), None
        held.discard(names[-1])
    kept = [p for p, group in zip(pictures, groups, strict=True) if group in held]
    paths = {Path(p.image_path) for p in kept}
    captions = sum(len(p.captions) for p in kept)
    return [r for r in records if Path(r.image_path) not in paths], ValidationSplit(
        kept, f"held out from the training data by group (look-alikes together): "
              f"{len(kept)} of {len(pictures)} pictures in {len(held)} groups, "
              f"{captions} captions")


def given_split(specs: Sequence[str], records: Sequence[CaptionedImage],
                training: Sequence[CaptionedImage]) -> ValidationSplit:
    """A validation split the user named; refused when it shares pictures with training."""
    pictures = by_picture(records)
    trained = {Path(r.image_path) for r in training}
    shared = [p.image_path for p in pictures if Path(p.image_path) in trained]
    if shared:
        raise ValueError(f"{len(shared)} validation pictures are also training pictures (e.g. "
                         f"{shared[0]}); validate on pictures the model never trains on")
    captions = sum(len(p.captions) for p in pictures)
    return ValidationSplit(pictures, f"{', '.join(specs)}: {len(pictures)} pictures, "
                                     f"{captions} captions")


class ValidationLog:
    """Every measurement of a run and the best of them; checkpoints carry its state."""

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        state = state or {}
        self.history: list[dict[str, Any]] = list(state.get("history", []))
        self.best: dict[str, Any] | None = state.get("best")
        self.last: dict[str, Any] | None = state.get("last")

    def add(self, step: int, found: ValidationFigures) -> bool:
        """Record a measurement; True when it is the best so far (ties keep the earlier)."""
        self.history.append({"step": step, "score": found.score, "bi_weight": found.bi_weight,
                             "reranker_gain": found.reranker_gain, "figures": found.figures})
        self.last = {"step": step, **asdict(found)}
        if self.best is None or found.score > self.best["score"]:
            self.best = self.last
            return True
        return False

    def state(self) -> dict[str, Any]:
        return {"history": self.history, "best": self.best, "last": self.last}

    def evidence(self, measured_on: str, last: bool = False) -> tuple[Evidence, dict[str, Any]]:
        """The best (or the last) measurement as evidence, and the details written beside
        it: the history, the weight grid, COOP with the match score alone."""
        chosen = self.last if last else self.best
        if chosen is None:
            raise ValueError("nothing was measured on the validation split")
        evidence = Evidence(chosen["bi_weight"] or 0.0, chosen["reranker_gain"],
                            chosen["figures"], measured_on, chosen["step"])
        details = {"selection": SELECTION, "score": chosen["score"],
                   "images": chosen["images"], "captions": chosen["captions"],
                   "weight_grid": chosen["weight_grid"], "match_only": chosen["match_only"],
                   "history": self.history}
        return evidence, details


__all__ = ["ValidationLog", "ValidationSplit", "by_picture", "given_split", "hold_out"]

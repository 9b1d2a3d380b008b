"""A model folder's validation evidence: does its reranker help, and with which blend.

``twinrank train`` measures the bi-encoder and retrieve-and-rerank (COOP@k) on a held-out
validation split and writes what it found to ``validation.json`` beside ``config.json``:
the blend weight ``bi_weight`` of the reranked score ``match + bi_weight * bi`` and
``reranker_gain``, the best COOP@k t2i R@1 at that weight minus the bi-encoder's t2i R@1
(percentage points). Search reads it to decide whether reranking is on by default.

This module imports neither torch nor the rest of twinrank, so reading the evidence costs
a JSON parse on the search path.

>>> evidence = read_evidence("models/demo")  # doctest: +SKIP
>>> evidence.reranker_helps, evidence.bi_weight  # doctest: +SKIP
(True, 2.5)
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EVIDENCE_FILE = "validation.json"
FORMAT = 1


@dataclass(frozen=True)
class Evidence:
    """What a model's validation found (the chosen checkpoint's measurement).

    ``reranker_gain`` is None when no reranker was measured (a bi-encoder-only run);
    ``bi_weight`` is then 0. ``figures`` maps a ranking ("bi", "coop@5", ...) to its
    recall metrics in percent (``t2i_recall@1``, ...); COOP figures are at ``bi_weight``.
    """

    bi_weight: float
    reranker_gain: float | None
    figures: dict[str, dict[str, float]]
    measured_on: str
    step: int | None = None  # the training step of the checkpoint the folder holds
    published: bool = False  # the authors' published evaluation, not a split measured here

    @property
    def reranker_helps(self) -> bool:
        """Whether reranking beat the bi-encoder on the validation split (or the model's
        authors published their retrieval figures for the reranked recipe)."""
        return self.published or (self.reranker_gain is not None and self.reranker_gain > 0)

    def summary(self) -> str:
        """The figures behind the verdict in a few words, for the line a search prints."""
        if self.published:
            return self.measured_on
        coop = max((name for name in self.figures if name.startswith("coop@")),
                   key=lambda name: self.figures[name].get("t2i_recall@1", -1.0), default="")
        bi = self.figures.get("bi", {}).get("t2i_recall@1", math.nan)
        best = self.figures.get(coop, {}).get("t2i_recall@1", math.nan)
        gain = "not measured" if self.reranker_gain is None else f"{self.reranker_gain:+.1f}"
        return (f"t2i R@1 {bi:.1f} for the bi-encoder against {best:.1f} for {coop or 'COOP'} "
                f"(gain {gain}) on {self.measured_on}")


# BLIP's authors evaluate retrieval as its ITC top k reranked by ITM + ITC cosine (k = 256
# on COCO, 128 on Flickr30k): their published figures are of the reranked order.
BLIP_PUBLISHED = Evidence(
    1.0, None, {}, "BLIP's published COCO and Flickr30k retrieval figures (Li et al., ICML "
    "2022, Table 5) rank the ITC top k by ITM logit + ITC cosine", published=True)


def rerank_doubt(model_id: str, evidence: Evidence | None) -> str | None:
    """Why a trained reranker is not used by default (its evidence is missing or says it
    does not help), as one line naming the figures; None when the evidence says it helps.

    >>> rerank_doubt("m", None).startswith("No reranking by default: m's reranker is unproven")
    True
    """
    if evidence is None:
        return (f"No reranking by default: {model_id}'s reranker is unproven (no held-out "
                f"evidence recorded); measure it with twinrank evaluate --record --data "
                f"VALIDATION.jsonl, or force it with --reranker fused.")
    if evidence.reranker_helps:
        return None
    return (f"No reranking by default: {model_id}'s reranker did not beat the bi-encoder on "
            f"held-out data ({evidence.summary()}); --reranker fused forces it.")


def read_evidence(folder: str | Path) -> Evidence | None:
    """The evidence recorded in a model folder, or None when it has none.

    A folder trained before evidence existed, or with no validation split, has none: its
    reranker is unproven. A file that is there but broken raises ``ValueError`` naming it.

    >>> read_evidence("no-such-model") is None
    True
    """
    path = Path(folder) / EVIDENCE_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        data = json.loads(text)
        return evidence_from_dict(data)
    except (json.JSONDecodeError, TypeError, KeyError, ValueError) as error:
        reason = f"no {error} field" if isinstance(error, KeyError) else str(error)
        raise ValueError(f"{path} is not readable validation evidence ({reason}); delete it "
                         "and measure the model again (twinrank train, or evaluate)") from None


def evidence_from_dict(data: Mapping[str, Any]) -> Evidence:
    """The ``Evidence`` of a ``validation.json`` payload (see ``evidence_payload``)."""
    if data.get("format") != FORMAT:
        raise ValueError(f"unknown evidence format {data.get('format')!r}")
    weight = float(data["bi_weight"] if data["bi_weight"] is not None else 0.0)
    gain = data["reranker_gain"]
    if not (math.isfinite(weight) and weight >= 0):
        raise ValueError(f"bi_weight must be a number >= 0, got {weight}")
    figures = {str(name): {str(k): math.nan if v is None else float(v)
                           for k, v in metrics.items()}
               for name, metrics in data["figures"].items()}
    step = data.get("chosen_step")
    return Evidence(weight, None if gain is None else float(gain), figures,
                    str(data["measured_on"]), None if step is None else int(step),
                    bool(data.get("published", False)))


def evidence_payload(evidence: Evidence, **details: Any) -> dict[str, Any]:
    """The JSON object ``write_evidence`` stores: the evidence plus any ``details``
    (history, the weight grid, sizes) a person may want to read.

    >>> payload = evidence_payload(Evidence(0.0, None, {"bi": {"t2i_recall@1": 4.0}}, "val"))
    >>> evidence_from_dict(payload).figures["bi"]
    {'t2i_recall@1': 4.0}
    """
    return {"format": FORMAT, "measured_on": evidence.measured_on, "published": evidence.published,
            "chosen_step": evidence.step, "bi_weight": evidence.bi_weight,
            "reranker_gain": evidence.reranker_gain, "figures": evidence.figures, **details}


def write_evidence(folder: str | Path, evidence: Evidence, **details: Any) -> Path:
    """Write ``validation.json`` into a model folder atomically (a reader never sees half)."""
    path = Path(folder) / EVIDENCE_FILE
    partial = path.with_name(f".{EVIDENCE_FILE}.partial")
    partial.write_text(json.dumps(_finite(evidence_payload(evidence, **details)), indent=2)
                       + "\n", encoding="utf-8")
    os.replace(partial, path)
    return path


def remove_evidence(folder: str | Path) -> None:
    """Forget a folder's evidence (its weights changed and were not measured again)."""
    (Path(folder) / EVIDENCE_FILE).unlink(missing_ok=True)


def _finite(value: Any) -> Any:
    """NaN (a recall over no queries) becomes null: strict JSON."""
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


__all__ = ["EVIDENCE_FILE", "Evidence", "evidence_from_dict", "evidence_payload",
           "read_evidence", "remove_evidence", "write_evidence"]

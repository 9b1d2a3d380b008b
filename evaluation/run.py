"""`twinrank evaluate`: datasets and a protocol in, tables + JSON + plots out.

A protocol fixes what the literature fixes: the corpus size, the number of captions per
image and whether results are a mean over 1k folds. ``full`` evaluates a dataset as given
(the synthetic scenes, a zero-shot split, any JSONL captions file).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from twinrank.captions.data import load_dataset
from twinrank.evaluation.encode import encode_corpus, limit_captions
from twinrank.evaluation.harness import (
    CorpusResult,
    HarnessConfig,
    evaluate_corpus,
    evaluate_folds,
    planned_ce_pairs,
)
from twinrank.evaluation.report import format_table, plot_sweep
from twinrank.models import TwinModel, create_model, model_id


@dataclass(frozen=True)
class Protocol:
    """The fixed rules of a published test split."""

    name: str
    n_images: int | None = None  # the corpus must have exactly this many images
    folds: int = 1  # results are the mean over this many equal, consecutive image folds
    captions_per_image: int | None = None  # keep the first N captions of each image
    note: str = ""


PROTOCOLS: dict[str, Protocol] = {
    "full": Protocol("full", note="the dataset as given, one corpus"),
    "coco5k": Protocol("coco5k", 5000, 1, 5, "MSCOCO Karpathy test, 5k images x 5 captions"),
    "coco1k": Protocol("coco1k", 5000, 5, 5, "MSCOCO Karpathy test, mean of five 1k folds"),
    "f30k": Protocol("f30k", 1000, 1, 5, "Flickr30k Karpathy test, 1k images x 5 captions"),
    "multi30k": Protocol("multi30k", None, 1, None,
                         "Multi30k test per language (one --data per language)"),
}


@dataclass(frozen=True)
class EvaluateJob:
    """Everything `twinrank evaluate` was asked to do."""

    model: str
    datasets: tuple[str, ...]  # specs, optionally "LABEL=SPEC"
    harness: HarnessConfig = field(default_factory=HarnessConfig)
    protocol: str = "full"
    pretrained: str | None = None
    device: str | None = None
    out_dir: Path | None = None
    encode_batch_size: int = 64


@dataclass
class DatasetReport:
    label: str
    spec: str
    result: CorpusResult
    encode_seconds: float
    evaluate_seconds: float


def split_label(entry: str) -> tuple[str, str]:
    """``"zeroshot=scenes:d:zeroshot"`` -> ("zeroshot", spec); a bare spec labels itself.

    >>> split_label("de=scenes:data/scenes:test:de")
    ('de', 'scenes:data/scenes:test:de')
    """
    label, sep, spec = entry.partition("=")
    if sep and label and not any(ch in label for ch in ":/\\."):
        return label, spec
    return entry, entry


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ValueError(f"unknown split protocol {name!r}; use one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def evaluate_dataset(model: TwinModel, spec: str, protocol: Protocol, job: EvaluateJob,
                     label: str | None = None) -> DatasetReport:
    """Read, encode and evaluate one dataset under ``protocol``."""
    records = limit_captions(load_dataset(spec), protocol.captions_per_image)
    if protocol.n_images is not None and len(records) != protocol.n_images:
        raise ValueError(f"protocol {protocol.name} needs exactly {protocol.n_images} test "
                         f"images but {spec!r} has {len(records)}; check the split, or use "
                         "--split-protocol full")
    folds = protocol.folds
    planned_ce_pairs(job.harness, sum(len(r.captions) for r in records) // folds,
                     len(records) // folds, sum(1 for r in records if r.captions) // folds)
    started = time.perf_counter()
    corpus = encode_corpus(model, records, job.encode_batch_size, job.harness.precision)
    encoded = time.perf_counter()
    if protocol.folds > 1:
        result = evaluate_folds(model, corpus, protocol.folds, job.harness)
    else:
        result = evaluate_corpus(model, corpus, job.harness)
    result.info["protocol"] = protocol.name
    return DatasetReport(label or spec, spec, result, encoded - started,
                         time.perf_counter() - encoded)


def _strict(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def report_payload(job: EvaluateJob, model: TwinModel,
                   reports: Sequence[DatasetReport]) -> dict[str, Any]:
    """Everything measured, as one JSON-ready dict (non-finite numbers become null)."""
    return _strict({
        "model": job.model, "model_id": model_id(model), "device": str(model.device),
        "protocol": asdict(get_protocol(job.protocol)), "harness": asdict(job.harness),
        "datasets": {r.label: {"spec": r.spec, "tables": r.result.tables,
                               "sweep": r.result.sweep, "latency": r.result.latency,
                               "info": r.result.info, "encode_seconds": r.encode_seconds,
                               "evaluate_seconds": r.evaluate_seconds} for r in reports},
    })


def write_outputs(out_dir: Path, payload: dict[str, Any] | None,
                  reports: Sequence[DatasetReport]) -> list[Path]:
    """``evaluation.json`` (unless ``payload`` is None) plus recall-vs-k and cost-vs-k PNGs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if payload is not None:
        path = out_dir / "evaluation.json"
        path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        written.append(path)
    for index, report in enumerate(reports):
        sweep = report.result.sweep
        if not sweep:
            continue
        folder = out_dir / f"{index:02d}-{_safe(report.label)}"
        cost_key = "rerank_ms_p50" if "rerank_ms_p50" in next(iter(sweep.values())) else None
        for metric in ("t2i_recall@1", "i2t_recall@1"):
            curve, refs = plot_inputs(report.result, metric)
            written += plot_sweep(curve, folder, metric=metric,
                                  cost_key=cost_key or metric, references=refs)
    return sorted(set(written))


def plot_inputs(result: CorpusResult, metric: str
                ) -> tuple[dict[int, dict[str, float]], dict[str, dict[str, float]]]:
    """The COOP@k curve and the bi / cross-all reference lines of one plot, all measured on
    the same queries.

    Why: with ``--ce-queries`` the cross-encoder over all pairs only ran on a sample, so
    its line must be drawn against COOP@k and the bi-encoder on that sample; a curve from
    all queries next to references from a few would misstate the gaps. A metric the sample
    lacks (i2t when only captions were sampled) is drawn from all queries.
    """
    sweep = result.sweep
    subset = result.tables.get("ce_subset", {})
    same = bool(subset) and subset.get("cross-all", {}).get(metric) is not None and all(
        subset.get(f"coop@{k}", {}).get(metric) is not None for k in sweep)
    table = subset if same else result.tables["all"]
    curve = {k: {**costs, metric: table[f"coop@{k}"][metric]} for k, costs in sweep.items()}
    refs: dict[str, dict[str, float]] = {mode: dict(table[mode]) for mode in ("bi", "cross-all")
                                         if mode in table}
    if "cross-all" in result.latency.get("modes", {}):
        refs.setdefault("cross-all", {}).update(result.latency["modes"]["cross-all"])
    return curve, refs


def _safe(label: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in label)[:60]


def format_report(reports: Sequence[DatasetReport]) -> str:
    """Readable tables: per dataset, recall per mode, then per-query cost per mode."""
    blocks: list[str] = []
    for report in reports:
        info = report.result.info
        blocks.append(f"== {report.label}: {info.get('n_images')} images, "
                      f"{info.get('n_texts')} captions, protocol {info.get('protocol')}"
                      + (f", cross-all scored {info['ce_all_pairs']:.0f} pairs"
                         if "ce_all_pairs" in info else "")
                      + (f", right answers: own image + {info['also_true_pairs']:.0f} also-true "
                         "pairs" if info.get("positives") == "all-true" else ""))
        for name, table in report.result.tables.items():
            if name == "ce_subset":
                blocks.append(f"-- on the cross-encoder's query sample ("
                              f"{info.get('ce_t2i_queries')} captions, "
                              f"{info.get('ce_i2t_queries')} images)")
            blocks.append(format_table(table))
        costs = report.result.latency.get("modes") if report.result.latency else None
        if costs:
            keep = ("pairs_per_query", "total_ms_p50", "total_ms_p95", "rerank_ms_p50",
                    "rerank_cost_vs_ce_all")
            blocks.append(f"-- cost per query ({report.result.latency['search_backend']} "
                          "search), ms")
            blocks.append(format_table({mode: {k: v for k, v in m.items() if k in keep}
                                        for mode, m in costs.items()}))
    return "\n".join(blocks)


def run_evaluation(job: EvaluateJob) -> tuple[str, dict[str, Any]]:
    """Load the model, evaluate every dataset, write outputs; return (text, payload)."""
    protocol = get_protocol(job.protocol)
    if not job.datasets:
        raise ValueError("no dataset to evaluate; pass --data SPEC (e.g. scenes:DIR:test)")
    model = create_model(job.model, pretrained=job.pretrained, device=job.device)
    reports = [evaluate_dataset(model, spec, protocol, job, label)
               for label, spec in map(split_label, job.datasets)]
    payload = report_payload(job, model, reports)
    text = format_report(reports)
    if job.out_dir is not None:
        written = write_outputs(job.out_dir, payload, reports)
        text += f"\nwrote {len(written)} files to {job.out_dir}"
    return text, payload


def record_job_evidence(job: EvaluateJob) -> str:
    """Measure the job's model folder on its first dataset and record the evidence in it
    (``evaluation.validation.record_evidence``); one line saying what was found."""
    from twinrank.captions.data import load_dataset
    from twinrank.evaluation.validation import ValidationConfig, record_evidence
    from twinrank.models.evidence import rerank_doubt

    folder = Path(job.model.removeprefix("blip:")).expanduser()
    if not folder.is_dir():
        raise ValueError(f"--record writes into a model folder; {job.model!r} is not one.")
    _, spec = split_label(job.datasets[0])
    model = create_model(job.model, pretrained=job.pretrained, device=job.device)
    evidence = record_evidence(model, folder, load_dataset(spec), spec,
                               ValidationConfig(precision=job.harness.precision))
    verdict = rerank_doubt(model.model_id, evidence) or (
        f"Reranking by default: {evidence.summary()}, blend weight {evidence.bi_weight:g}.")
    return f"Recorded in {folder / 'validation.json'}. {verdict}"


__all__ = ["PROTOCOLS", "EvaluateJob", "Protocol", "evaluate_dataset", "format_report",
           "get_protocol", "plot_inputs", "run_evaluation", "split_label", "write_outputs"]

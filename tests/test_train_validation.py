"""Training measures itself on a held-out split and records the evidence: the grouped
hold-out, the blend-weight grid, the evidence file, and the loop ending on its best step."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from twinrank.captions.data import CaptionedImage, load_dataset
from twinrank.captions.scenes import ScenesConfig, make_scenes
from twinrank.evaluation.metrics import t2i_recall, topk_indices
from twinrank.evaluation.validation import (
    ValidationConfig,
    ValidationFigures,
    measure_validation,
    scaled_weights,
    weight_grid,
)
from twinrank.models import create_model
from twinrank.models.evidence import (
    EVIDENCE_FILE,
    Evidence,
    read_evidence,
    write_evidence,
)
from twinrank.train import trainer
from twinrank.train.checkpoints import BEST_FILE, CHECKPOINT_DIR
from twinrank.train.trainer import TrainConfig, train
from twinrank.train.validation import by_picture, given_split, hold_out


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("scenes")
    make_scenes(folder, ScenesConfig(n_train=16, n_val=6, n_test=0, n_zeroshot=0,
                                     image_size=32, languages=("en", "de")))
    return folder


def _config(scenes: Path, out: Path, **changes: object) -> TrainConfig:
    base = TrainConfig(data=(f"scenes:{scenes}:train:en", f"scenes:{scenes}:train:de"),
                       out=out, model="twinrank-tiny", steps=4, batch_size=6,
                       warmup_steps=2, log_every=1, progress=False, validate_every=1)
    return replace(base, **changes)


def _pictures(count: int, key: str = "") -> list[CaptionedImage]:
    return [CaptionedImage(Path(f"p{i}.png"), (f"caption {i}",), image_id=f"p{i}",
                           lookalike_key=key and f"{key}{i % 3}") for i in range(count)]


def test_hold_out_keeps_groups_and_languages_together_whatever_the_order() -> None:
    records = _pictures(60, key="look")  # three look-alike groups of 20
    records += [replace(r, captions=("eine Beschriftung",), language="de") for r in records]
    train, split = hold_out(records, 0.2)
    assert split is not None and len(split.records) == 20  # one whole group of three
    assert {r.lookalike_key for r in split.records} == {split.records[0].lookalike_key}
    assert all(len(r.captions) == 2 for r in split.records)  # en + de of one picture
    held = {r.image_path for r in split.records}
    assert not held & {r.image_path for r in train} and len(train) == 80
    _, again = hold_out(list(reversed(records)), 0.2)
    assert again is not None and {r.image_path for r in again.records} == held
    assert "20 of 60 pictures in 1 groups" in split.measured_on


def test_hold_out_sizes_and_edges() -> None:
    train, split = hold_out(_pictures(400), 0.1)
    assert split is not None and 25 <= len(split.records) <= 55 and len(train) == 400 - len(
        split.records)
    _, capped = hold_out(_pictures(400), 0.5, max_images=20)
    assert capped is not None and 5 <= len(capped.records) <= 40
    _, tiny = hold_out(_pictures(2), 0.01)  # at least one group, and one left to train on
    assert tiny is not None and len(tiny.records) == 1
    assert hold_out(_pictures(1), 0.5)[1] is None and hold_out(_pictures(9), 0.0)[1] is None


def test_a_given_split_must_not_share_pictures_with_training() -> None:
    with pytest.raises(ValueError, match="1 validation pictures are also training pictures"):
        given_split(["val.jsonl"], _pictures(3)[2:], _pictures(5))
    assert len(given_split(["v"], by_picture(_pictures(2)), []).records) == 2


def test_weights_span_the_logit_range_and_the_grid_blends_match_and_bi() -> None:
    rng = np.random.default_rng(0)
    bi = rng.uniform(-1, 1, (30, 12))
    text_to_image = np.arange(30) % 12
    # the match score is the truth plus noise, 10x the cosines' spread
    top = topk_indices(bi, 5)
    truth = (top == text_to_image[:, None]).astype(float)
    match_top = 10 * truth + rng.normal(0, 3, top.shape)
    weights = scaled_weights(match_top, np.take_along_axis(bi, top, 1), (0.0, 1.0, 1000.0))
    assert weights[0] == 0.0 and 5 < weights[1] < 20
    grid = weight_grid(bi, match_top, text_to_image, [5], weights)
    bi_r1 = t2i_recall(bi, text_to_image, (1,))["t2i_recall@1"]
    assert grid[weights[-1]]["coop@5"]["t2i_recall@1"] == bi_r1  # a huge w: the bi order
    assert grid[0.0]["coop@5"]["t2i_recall@5"] == t2i_recall(bi, text_to_image, (5,))[
        "t2i_recall@5"]  # reranking inside the top 5 keeps R@5


def test_measurement_agrees_with_the_harness_and_defines_the_gain(scenes: Path) -> None:
    model = create_model("twinrank-tiny", device="cpu").eval()
    records = by_picture(load_dataset(f"scenes:{scenes}:val:en"))
    found = measure_validation(model, records, ValidationConfig(ks=(2, 4)))
    assert found.images == 6 and found.captions == 18
    assert set(found.figures) == {"bi", "coop@2", "coop@4"}
    assert found.bi_weight is not None and f"{found.bi_weight:g}" in found.weight_grid
    assert found.weight_grid["0"]["coop@4"]["t2i_recall@1"] == found.match_only["coop@4"][
        "t2i_recall@1"]  # the grid at w = 0 is the harness's COOP with the match score alone
    best = max(found.figures[k]["t2i_recall@1"] for k in ("coop@2", "coop@4"))
    assert found.reranker_gain == pytest.approx(best - found.figures["bi"]["t2i_recall@1"])
    assert all(best >= grid[k]["t2i_recall@1"] for grid in found.weight_grid.values()
               for k in grid)
    bi_only = measure_validation(model, records, ValidationConfig(rerank=False))
    assert bi_only.reranker_gain is None and bi_only.figures == {"bi": found.figures["bi"]}


def test_evidence_reads_back_and_costs_no_torch(tmp_path: Path) -> None:
    assert read_evidence(tmp_path) is None  # unproven: nothing measured
    figures = {"bi": {"t2i_recall@1": 5.0}, "coop@20": {"t2i_recall@1": float("nan")}}
    write_evidence(tmp_path, Evidence(2.5, -0.4, figures, "val.jsonl", 300), history=[])
    evidence = read_evidence(tmp_path)
    assert evidence is not None and evidence.bi_weight == 2.5 and evidence.step == 300
    assert not evidence.reranker_helps and evidence.measured_on == "val.jsonl"
    assert np.isnan(evidence.figures["coop@20"]["t2i_recall@1"])  # stored as null
    (tmp_path / EVIDENCE_FILE).write_text("{\"format\": 1}")
    with pytest.raises(ValueError, match="not readable validation evidence .no 'bi_weight'"):
        read_evidence(tmp_path)
    code = ("import sys, twinrank.models.evidence as e; e.read_evidence('elsewhere'); "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=tmp_path).returncode == 0


def _scripted(scores: list[float]) -> Callable[..., ValidationFigures]:
    """A stand-in for measure_validation that reports the given scores in turn."""
    calls: list[int] = []

    def measure(model: object, records: list[object], config: object) -> ValidationFigures:
        score = scores[len(calls)]
        calls.append(1)
        figures = {"bi": {"t2i_recall@1": score}, "coop@5": {"t2i_recall@1": score + 1}}
        return ValidationFigures(figures, 0.5, 1.0, score, {"0.5": {}}, {}, len(records), 3)
    return measure


def test_the_run_ends_on_its_best_step_and_records_it(scenes, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(trainer, "measure_validation", _scripted([10.0, 30.0, 20.0, 25.0]))
    result = train(_config(scenes, tmp_path / "best"))
    assert result.chosen_step == 2
    best = torch.load(tmp_path / "best" / CHECKPOINT_DIR / BEST_FILE, weights_only=False)
    saved = load_file(str(tmp_path / "best" / "model.safetensors"))
    assert all(torch.equal(best["models"][f"twin.{name}"], value)
               for name, value in saved.items())
    evidence = read_evidence(tmp_path / "best")
    assert evidence is not None and evidence.step == 2 and evidence.reranker_gain == 1.0
    record = json.loads((tmp_path / "best" / EVIDENCE_FILE).read_text())
    assert [row["step"] for row in record["history"]] == [1, 2, 3, 4]
    assert "groups" in record["measured_on"] and record["images"] >= 1
    monkeypatch.setattr(trainer, "measure_validation", _scripted([10.0, 30.0, 20.0, 25.0]))
    last = train(_config(scenes, tmp_path / "last", keep_best=False))
    assert last.chosen_step == 4 and read_evidence(tmp_path / "last") == replace(
        evidence, step=4, figures=_scripted([25.0])(None, [], None).figures)
    final = load_file(str(tmp_path / "last" / "model.safetensors"))
    assert not all(torch.equal(final[name], saved[name]) for name in saved)


def test_resume_keeps_the_validation_history(scenes, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(trainer, "measure_validation", _scripted([1.0, 3.0, 2.0, 0.0]))
    whole = tmp_path / "whole"
    train(_config(scenes, whole, checkpoint_every=2))
    died = tmp_path / "died"
    (died / CHECKPOINT_DIR).mkdir(parents=True)
    step2 = sorted((whole / CHECKPOINT_DIR).glob("step-*.pt"))[0]
    (died / CHECKPOINT_DIR / step2.name).write_bytes(step2.read_bytes())
    (died / CHECKPOINT_DIR / BEST_FILE).write_bytes(  # best.pt of step 2, as it was then
        (whole / CHECKPOINT_DIR / BEST_FILE).read_bytes())
    monkeypatch.setattr(trainer, "measure_validation", _scripted([2.0, 0.0]))  # steps 3, 4
    resumed = train(_config(scenes, died, checkpoint_every=2, resume=True))
    assert resumed.resumed_from == 2 and resumed.chosen_step == 2
    history = json.loads((died / EVIDENCE_FILE).read_text())["history"]
    assert [(row["step"], row["score"]) for row in history] == [(1, 1.0), (2, 3.0), (3, 2.0),
                                                               (4, 0.0)]
    reference = load_file(str(whole / "model.safetensors"))
    weights = load_file(str(died / "model.safetensors"))
    assert all(torch.equal(reference[name], weights[name]) for name in reference)


def test_validating_does_not_change_training(scenes, tmp_path) -> None:
    """A given split leaves the training data as it is: with keep_best off, the weights
    match a run that never validated, so measuring drew nothing from training's RNG."""
    plain = train(_config(scenes, tmp_path / "plain", validation_fraction=0.0, steps=2))
    assert read_evidence(plain.model_dir) is None
    measured = train(_config(scenes, tmp_path / "measured", steps=2, keep_best=False,
                             validation_data=(f"scenes:{scenes}:val:en",)))
    a = load_file(str(plain.model_dir / "model.safetensors"))
    b = load_file(str(measured.model_dir / "model.safetensors"))
    assert all(torch.equal(a[name], b[name]) for name in a)
    evidence = read_evidence(measured.model_dir)
    assert evidence is not None and evidence.reranker_gain is not None
    assert evidence.measured_on.startswith(f"scenes:{scenes}:val:en: 6 pictures")
    # retraining into the folder without validation drops the now stale evidence
    train(_config(scenes, tmp_path / "measured", validation_fraction=0.0, steps=1))
    assert read_evidence(measured.model_dir) is None

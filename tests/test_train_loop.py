"""The training loop end to end on tiny scenes: model folders, SEP pairs, resume, batches."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from twinrank.captions.data import load_dataset
from twinrank.captions.scenes import ScenesConfig, make_scenes
from twinrank.models import create_model, save_model
from twinrank.models.pair import SepTwinModel
from twinrank.train.batches import TrainingSet
from twinrank.train.checkpoints import latest_checkpoint
from twinrank.train.trainer import METRICS_FILE, TrainConfig, train


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("scenes")
    make_scenes(folder, ScenesConfig(n_train=12, n_val=0, n_test=0, n_zeroshot=0,
                                     image_size=32, languages=("en", "de")))
    return folder


def _config(scenes: Path, out: Path, **changes: object) -> TrainConfig:
    base = TrainConfig(data=(f"scenes:{scenes}:train:en", f"scenes:{scenes}:train:de"),
                       out=out, model="twinrank-tiny", steps=4, batch_size=6,
                       warmup_steps=2, log_every=1, progress=False)
    return replace(base, **changes)


def _outputs(model, pixels: torch.Tensor, texts: list[str]) -> list[torch.Tensor]:
    with torch.no_grad():
        image = model.encode_image(pixels)
        text = model.encode_text(model.tokenize(texts))
        logits = model.match_logit(text.text_tokens, text.text_mask, image.image_tokens)
    return [image.image_vector, image.image_tokens, text.text_vector, logits]


@pytest.fixture(scope="module")
def joint_run(scenes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 4-step JOINT run with a checkpoint at step 2, shared by the tests below."""
    out = tmp_path_factory.mktemp("runs") / "joint"
    train(_config(scenes, out, checkpoint_every=2))
    return out


def test_training_writes_a_model_folder_that_loads_and_logs_metrics(joint_run) -> None:
    model = create_model(joint_run, device="cpu")
    assert type(model).__name__ == "TwinModel"
    assert model.reranker_trained  # a joint run trains the match objective: it may rerank
    rows = [json.loads(line) for line in (joint_run / METRICS_FILE).read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    assert {"contrastive_loss", "match_loss", "lr", "samples_per_s"} <= set(rows[0])
    assert rows[1]["lr"] > rows[0]["lr"] and rows[3]["lr"] < rows[1]["lr"]  # warmup, cosine


def test_save_then_load_gives_identical_outputs(tiny_model, tmp_path) -> None:
    pixels, texts = torch.randn(2, 3, 32, 32), ["a red circle", "a blue star above a cross"]
    folder = save_model(tiny_model, tmp_path / "m")
    for before, after in zip(_outputs(tiny_model.eval(), pixels, texts),
                             _outputs(create_model(folder), pixels, texts), strict=True):
        assert torch.equal(before, after)


def test_sep_pair_saves_loads_and_encodes_with_both_models(tiny_model, tmp_path) -> None:
    cross = create_model("twinrank-tiny", seed=1)
    pair = SepTwinModel.from_pair(tiny_model.eval(), cross).eval()  # as loaded models are
    pixels, texts = torch.randn(2, 3, 32, 32), ["a red circle", "a blue star"]
    outputs = _outputs(pair, pixels, texts)
    assert torch.equal(outputs[0], _outputs(tiny_model, pixels, texts)[0])  # bi's vectors
    assert torch.equal(outputs[1], _outputs(cross, pixels, texts)[1])  # cross's tokens
    assert torch.equal(outputs[3], _outputs(cross, pixels, texts)[3])  # cross's head
    loaded = create_model(save_model(pair, tmp_path / "sep"))
    assert isinstance(loaded, SepTwinModel)
    for before, after in zip(outputs, _outputs(loaded, pixels, texts), strict=True):
        # the same weights; loaded tensors may sit at other alignments, so the head's
        # attention can round its last bit differently (1e-7 seen)
        assert torch.allclose(before, after, rtol=0, atol=1e-6)


def test_fp16_files_are_half_the_size_and_load_close(tiny_model, tmp_path) -> None:
    full = save_model(tiny_model, tmp_path / "fp32") / "model.safetensors"
    half = save_model(tiny_model, tmp_path / "fp16", torch.float16) / "model.safetensors"
    assert half.stat().st_size < 0.55 * full.stat().st_size
    pixels = torch.randn(2, 3, 32, 32)
    a = _outputs(tiny_model.eval(), pixels, ["a red circle"] * 2)[0]
    b = _outputs(create_model(tmp_path / "fp16"), pixels, ["a red circle"] * 2)[0]
    assert torch.allclose(a, b, atol=2e-2)


def test_sep_training_exports_a_pair(scenes, tmp_path) -> None:
    train(_config(scenes, tmp_path / "sep", mode="sep", steps=1))
    assert isinstance(create_model(tmp_path / "sep"), SepTwinModel)


def test_resume_continues_where_it_stopped(scenes, joint_run, tmp_path) -> None:
    reference = load_file(str(joint_run / "model.safetensors"))
    assert latest_checkpoint(joint_run).name == "step-0000002.pt"
    died = tmp_path / "died"  # as if the run had died after its step-2 checkpoint
    shutil.copytree(joint_run / "checkpoints", died / "checkpoints")
    resumed = train(_config(scenes, died, checkpoint_every=2, resume=True))
    assert resumed.resumed_from == 2
    weights = load_file(str(resumed.model_dir / "model.safetensors"))
    assert all(torch.equal(reference[name], weights[name]) for name in reference)


def test_resume_without_a_checkpoint_says_what_to_do(scenes, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(_config(scenes, tmp_path / "fresh", resume=True))


def test_batches_merge_languages_and_keep_look_alikes_together(scenes) -> None:
    records = load_dataset(f"scenes:{scenes}:train:en") + load_dataset(
        f"scenes:{scenes}:train:de")
    records = [replace(r, lookalike_key="abc"[int(r.image_id[-2:]) % 3]) for r in records]
    data = TrainingSet(records, create_model("twinrank-tiny").preprocess, seed=3)
    assert len(data) == 12 and all(len(c) == 6 for c in data.captions)  # 3 en + 3 de
    order = data.epoch_order(0).tolist()
    assert sorted(order) == list(range(12)) and order == data.epoch_order(0).tolist()
    assert order != data.epoch_order(1).tolist()
    keys = [data.lookalike_keys[i] for i in order]
    assert sorted(set(keys)) == ["a", "b", "c"]
    for key in set(keys):  # each look-alike group is one contiguous run
        first, last = keys.index(key), len(keys) - 1 - keys[::-1].index(key)
        assert keys[first : last + 1] == [key] * (last - first + 1)
    batch = data.batch(epoch=0, index=1, batch_size=4)
    assert batch.pixels.shape == (4, 3, 32, 32) and batch.image_ids.tolist() == order[4:8]


def test_train_command_trains_and_reports(scenes, tmp_path) -> None:
    from twinrank.cli import app

    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["train", "--data", f"scenes:{scenes}:train:en",
                                      "--out", str(out), "--model", "twinrank-tiny",
                                      "--steps", "1", "--batch-size", "4", "--mode", "bi"])
    assert result.exit_code == 0, result.output
    assert (out / "config.json").is_file() and "model folder" in result.output
    assert not create_model(out, device="cpu").reranker_trained  # bi only: head untouched
    bad = CliRunner().invoke(app, ["train", "--data", "nowhere.jsonl", "--out", str(out)])
    assert bad.exit_code == 1 and "not found" in bad.output


def test_scenes_config_carries_its_head_and_the_pooled_term_counts() -> None:
    model = create_model("twinrank-scenes")
    assert model.config.fusion.width == 128 and model.config.fusion.pooled_match
    assert model.config.token_grid == 0 and model.config.image_token_count == 36
    pixels = torch.randn(2, 3, 48, 48)
    before = _outputs(model, pixels, ["a red circle", "a blue star"])[3]
    torch.nn.init.eye_(model.head.pooled.weight)
    after = _outputs(model, pixels, ["a red circle", "a blue star"])[3]
    assert not torch.allclose(before, after)


def test_images_that_share_a_caption_are_never_each_others_negatives(scenes, tmp_path) -> None:
    records = load_dataset(f"scenes:{scenes}:train:en")
    view = replace(records[5], image_path=tmp_path / "view.png",
                   captions=(records[0].captions[0], "a caption of its own"))
    shutil.copy(records[0].image_path, view.image_path)
    data = TrainingSet(records + [view], create_model("twinrank-tiny").preprocess)
    assert data.same_as.tolist() == list(range(len(records))) + [0]
    rows = data.batch(epoch=0, index=0, batch_size=len(data))
    order = data.epoch_order(0).tolist()
    assert rows.image_ids.tolist() == [0 if i == len(records) else i for i in order]


def test_batches_mark_captions_that_are_true_of_another_image(scenes) -> None:
    records = load_dataset(f"scenes:{scenes}:train:en") + load_dataset(
        f"scenes:{scenes}:train:de")
    ids = sorted({r.image_id for r in records})
    # image 0's captions also hold for image 5 (in both languages' records)
    records = [replace(r, also_true=(ids[5],)) if r.image_id == ids[0] else r for r in records]
    preprocess = create_model("twinrank-tiny").preprocess
    data = TrainingSet(records, preprocess, seed=3, group_lookalikes=False)
    batch = data.batch(epoch=0, index=0, batch_size=12)
    rows = data.epoch_order(0).tolist()
    assert batch.positives is not None
    expected = torch.eye(12, dtype=torch.bool)
    expected[rows.index(5), rows.index(0)] = True  # image 5 x caption of image 0
    assert torch.equal(batch.positives, expected)
    off = TrainingSet(records, preprocess, seed=3, group_lookalikes=False, also_true=False)
    assert off.batch(epoch=0, index=0, batch_size=12).positives is None


def test_training_at_a_new_image_size_and_depth_keeps_the_start_weights(scenes, tmp_path) -> None:
    from twinrank.cli import app

    start = tmp_path / "start"
    save_model(create_model("twinrank-tiny"), start)
    out = tmp_path / "bigger"
    result = CliRunner().invoke(app, ["train", "--data", f"scenes:{scenes}:train:en",
                                      "--out", str(out), "--model", str(start),
                                      "--image-size", "48", "--fusion-layers", "3",
                                      "--steps", "1", "--lr", "0",
                                      "--batch-size", "4", "--mode", "bi"])
    assert result.exit_code == 0, result.output
    trained = create_model(out)
    assert trained.config.image_size == 48 and trained.preprocess.transforms[0].size == 48
    assert trained.config.fusion.layers == 3 and len(trained.head.layers) == 3
    before, after = load_file(str(start / "model.safetensors")), trained.state_dict()
    assert torch.equal(before["clip.text.token_embedding.weight"],
                       after["clip.text.token_embedding.weight"])  # lr 0: nothing moved
    bad = CliRunner().invoke(app, ["train", "--data", f"scenes:{scenes}:train:en",
                                   "--out", str(tmp_path / "bad"), "--model", str(start),
                                   "--image-size", "50", "--steps", "1"])
    assert bad.exit_code == 1 and "multiple of the patch size" in bad.output

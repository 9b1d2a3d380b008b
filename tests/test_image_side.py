"""Ingest's image side (``models.image_side``) computes what the full open_clip model
computes, to the bit, without importing open_clip, torchvision or transformers.

Exact equality against the reference (open_clip's ``VisionTransformer`` inside a
``TwinModel``) on tiny random models of each variant the image side implements, so the
published quality of real checkpoints carries over.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import make_image
from twinrank.ingest.job import LIGHT_INGEST_ENV, IngestJob, ingest_folder
from twinrank.ingest.runner import IngestConfig
from twinrank.models import TwinModel, create_model, save_model
from twinrank.models.config import TwinConfig, load_clip_config
from twinrank.models.encode import ImageEmbedder, ImagePreparer
from twinrank.models.image_side import ImageSide, load_image_side, unsupported
from twinrank.models.pair import SepTwinModel
from twinrank.store import CollectionMismatchError, open_store

TINY = load_clip_config("twinrank-tiny")


def variant(name: str, token_grid: int = 0, quick_gelu: bool = False,
            **vision: object) -> TwinConfig:
    clip_cfg = {**TINY, "vision_cfg": {**TINY["vision_cfg"], **vision}}
    if quick_gelu:
        clip_cfg["quick_gelu"] = True
    return TwinConfig(name=name, clip_cfg=clip_cfg, token_grid=token_grid)


VARIANTS = {
    "plain": variant("plain"),
    "openai-style": variant("openai-style", token_grid=2, quick_gelu=True, ls_init_value=0.5,
                            no_ln_pre=True),
    "avg-pool": variant("avg-pool", pool_type="avg", final_ln_after_pool=True,
                        norm_kwargs={"eps": 1e-6}, act_kwargs={"approximate": "tanh"}),
}


def saved(config: TwinConfig, folder: Path) -> Path:
    torch.manual_seed(3)
    model = TwinModel(config, model_id=f"{config.name}:random")
    with torch.no_grad():  # a trained head's LayerNorm is not the identity it starts as
        for parameter in model.head.image_in.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    return save_model(model, folder)


def photos(count: int = 5) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    sizes = [(32, 32), (57, 31), (45, 200), (33, 33), (200, 45)]
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
            for w, h in sizes[:count]]


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_the_image_side_equals_the_full_model_bit_for_bit(name: str, tmp_path: Path) -> None:
    folder = saved(VARIANTS[name], tmp_path / name)
    full, side = create_model(folder), load_image_side(folder)
    assert isinstance(side, ImageSide) and side.model_id == full.model_id
    pixels = torch.randn(4, 3, 32, 32)
    with torch.inference_mode():
        want, got = full.encode_image(pixels), side.encode_image(pixels)
    assert torch.equal(got.image_vector, want.image_vector)
    assert torch.equal(got.image_tokens, want.image_tokens)
    assert side.token_shape == full.token_shape and side.vector_size == full.vector_size
    for precision in ("fp32", "bf16"):  # ingest's embedder, bf16 copy included
        vectors, tokens = ImageEmbedder(side, precision).embed(photos())
        want_vectors, want_tokens = ImageEmbedder(full, precision).embed(photos())
        assert np.array_equal(vectors, want_vectors) and np.array_equal(tokens, want_tokens)


def test_its_preprocessing_equals_open_clips_transform(tmp_path: Path) -> None:
    folder = saved(VARIANTS["plain"], tmp_path / "plain")
    full, side = create_model(folder), load_image_side(folder)
    assert side is not None
    images = [*photos(), photos(1)[0].convert("L"), photos(3)[2].convert("RGBA"),
              photos(2)[1].convert("P")]
    theirs = ImagePreparer(full.preprocess, full.image_size)
    ours = ImagePreparer(side.preprocess, side.image_size)
    assert ours.split and theirs.split
    for image in images:
        assert torch.equal(side.preprocess(image), full.preprocess(image)), image.size
        assert np.array_equal(ours.prepare(image), theirs.prepare(image)), image.size


def test_what_it_does_not_cover_goes_to_the_full_model(tmp_path: Path) -> None:
    plain = VARIANTS["plain"]
    resnet = replace(plain, clip_cfg={**plain.clip_cfg, "vision_cfg": {
        **plain.clip_cfg["vision_cfg"], "layers": [1, 1, 1, 1]}})
    assert unsupported(resnet) == "a ResNet image tower"
    for option in ({"attentional_pool": True}, {"timm_model_name": "vit_tiny"},
                   {"qk_norm": True}, {"pool_type": "none"}):
        odd = replace(plain, clip_cfg={**plain.clip_cfg, "vision_cfg": {
            **plain.clip_cfg["vision_cfg"], **option}})
        assert unsupported(odd), option
    assert unsupported(plain) is None
    pair = SepTwinModel.from_pair(create_model("twinrank-tiny"),
                                  create_model("twinrank-tiny", seed=1))
    assert load_image_side(save_model(pair, tmp_path / "sep")) is None
    assert load_image_side("twinrank-tiny") is None  # a name: built with open_clip
    assert load_image_side(tmp_path / "missing") is None
    damaged = saved(VARIANTS["plain"], tmp_path / "damaged")
    (damaged / "model.safetensors").write_bytes(b"not a weights file")
    assert load_image_side(damaged) is None  # the full model's loader reports it
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text('{"architectures": ["Blip"]}')
    (tmp_path / "odd" / "model.safetensors").write_bytes(b"")
    assert load_image_side(tmp_path / "odd") is None


def ingest_in_a_process(folder: Path, store: Path, model: Path, light: bool = True) -> str:
    """`twinrank ingest` in a fresh process; prints which heavy packages it imported."""
    script = ("import sys\n"
              "from twinrank.cli import app\n"
              f"app(['ingest', {str(folder)!r}, '--store', {str(store)!r}, '--no-progress', "
              f"'--model', {str(model)!r}], standalone_mode=False)\n"
              "print('IMPORTED', [m for m in ('open_clip', 'torchvision', 'transformers') "
              "if m in sys.modules])\n")
    env = {**os.environ, LIGHT_INGEST_ENV: "1" if light else "0"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=240, check=True, env=env)
    return done.stdout + done.stderr


def test_adding_images_to_a_collection_imports_no_open_clip(tmp_path: Path) -> None:
    folder = saved(VARIANTS["openai-style"], tmp_path / "model")
    photos_dir, store = tmp_path / "photos", tmp_path / "store"
    for seed in range(4):
        make_image(photos_dir / f"{seed}.png", seed=seed)
    first = ingest_folder(IngestJob(IngestConfig(photos_dir, progress=False), store,
                                    model=str(folder)))
    assert first.added == 4
    new = make_image(photos_dir / "new.png", seed=99, size=(61, 37))
    output = ingest_in_a_process(photos_dir, store, folder)
    assert "added 1," in output and "IMPORTED []" in output, output
    make_image(photos_dir / "newer.png", seed=98)
    baseline = ingest_in_a_process(photos_dir, store, folder, light=False)
    assert "added 1," in baseline and "'open_clip'" in baseline, baseline
    vectors, tokens = ImageEmbedder(create_model(folder)).embed([Image.open(new)])
    with open_store(store) as opened:
        ids = [pid for pid, payload in opened.iter_payloads()
               if any(path.endswith("new.png") for path in payload["paths"])]
        assert len(ids) == 1
        assert np.allclose(opened.get_vectors(ids)[ids[0]], vectors[0], atol=1e-6)
        assert np.array_equal(opened.get_tokens(ids)[ids[0]], tokens[0])


def test_another_model_folder_is_refused_without_loading_the_full_model(tmp_path: Path) -> None:
    photos_dir, store = tmp_path / "photos", tmp_path / "store"
    make_image(photos_dir / "a.png", seed=1)
    first = saved(VARIANTS["plain"], tmp_path / "first")
    ingest_folder(IngestJob(IngestConfig(photos_dir, progress=False), store, model=str(first)))
    other = saved(VARIANTS["avg-pool"], tmp_path / "first-again")  # same path, new weights
    make_image(photos_dir / "b.png", seed=2)
    shutil.rmtree(first)
    shutil.copytree(other, first)
    with pytest.raises(CollectionMismatchError, match="was built with model"):
        ingest_folder(IngestJob(IngestConfig(photos_dir, progress=False), store,
                                model=str(first)))


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The ``twinrank`` command as installed (``cli.main``), in its own process."""
    return subprocess.run([sys.executable, "-m", "twinrank.cli", *args], capture_output=True,
                          text=True, timeout=240)


def test_the_command_exits_quickly_with_its_output_and_status_intact(tmp_path: Path) -> None:
    """``cli.main`` ends a process that imported torch without Python's teardown: the
    output, the report file and the exit status must be what the command produced."""
    photos_dir, store = tmp_path / "photos", tmp_path / "store"
    make_image(photos_dir / "a.png", seed=1)
    folder = saved(VARIANTS["plain"], tmp_path / "model")
    done = run_cli("ingest", str(photos_dir), "--store", str(store), "--model", str(folder),
                   "--no-progress", "--report", str(tmp_path / "report.json"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith(")") and "added 1," in done.stdout
    assert '"added": 1' in (tmp_path / "report.json").read_text()
    other = saved(VARIANTS["avg-pool"], tmp_path / "other")
    make_image(photos_dir / "b.png", seed=2)
    refused = run_cli("ingest", str(photos_dir), "--store", str(store), "--model", str(other),
                      "--no-progress")
    assert refused.returncode == 1
    assert "was built with model" in refused.stderr + refused.stdout
    assert "Traceback" not in refused.stderr

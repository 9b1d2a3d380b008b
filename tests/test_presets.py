"""Model presets, the default for a new store, and the rule that an untrained reranker is
never used by default (CLI, Python client, app). No weights can be downloaded here: the
hub is replaced by a recorder where a download would happen, and the tests say so."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest
from typer.testing import CliRunner

from tests.conftest import make_image
from tests.hub_fake import install as install_fake_hub
from twinrank.cli import app
from twinrank.models import create_model, presets
from twinrank.models.config import twin_config
from twinrank.models.presets import DEFAULT_PRESET, PRESETS, preset, pull, resolve
from twinrank.rerank import UntrainedRerankerError
from twinrank.search import SearchClient
from twinrank.ui.launch import STORE_ENV

APP = str(Path(__file__).parents[1] / "ui" / "app.py")
UNTRAINED = "TWINRANK_ALLOW_UNTRAINED_RERANKER"


def test_preset_sizes_match_their_architectures():
    """What `twinrank models` says of each preset is what its architecture builds."""
    from transformers import BlipConfig

    for chosen in PRESETS:
        if chosen.model.startswith("blip:"):
            vision = BlipConfig().vision_config  # transformers' default BLIP is the base size
            if chosen.name == "blip-large":
                vision.hidden_size = 1024
            tokens = (vision.image_size // vision.patch_size) ** 2 + 1
            assert (chosen.image_size, chosen.token_shape) == (
                vision.image_size, (tokens, vision.hidden_size))
            assert chosen.vector_size == BlipConfig().image_text_hidden_size
        elif chosen.pretrained:
            config = twin_config(chosen.model)
            assert (chosen.image_size, chosen.vector_size) == (config.image_size,
                                                               config.embed_dim)
            assert chosen.token_shape == (config.image_token_count, config.fusion.width)
        else:
            model = create_model(chosen.name, device="cpu")
            assert (chosen.image_size, chosen.vector_size, chosen.token_shape) == (
                model.image_size, model.vector_size, model.token_shape)
            assert bool(chosen.reranker) == model.reranker_trained


def test_presets_resolve_to_the_loaders_they_name():
    import open_clip

    assert resolve("blip-base") == ("blip:Salesforce/blip-itm-base-coco", None)
    assert resolve("clip-b32") == ("ViT-B-32", "laion2b_s34b_b79k")
    assert resolve("clip-b32", "openai") == ("clip-b32", "openai")  # explicit tag: as given
    for chosen in PRESETS:
        if chosen.pretrained:  # our repo for the tag is open_clip's own
            cfg = open_clip.get_pretrained_cfg(chosen.model, chosen.pretrained)
            assert cfg["hf_hub"].strip("/") == chosen.weights_repo
    assert create_model("demo", device="cpu").reranker_trained  # the shipped folder
    assert DEFAULT_PRESET == "blip-base" and preset(DEFAULT_PRESET).reranker


def test_models_lists_every_preset_with_its_default():
    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    for chosen in PRESETS:
        assert chosen.name in result.output
    assert "(default for a new store)" in result.output
    assert "not re-measured here" in result.output


def test_models_pull_fetches_what_loading_reads_into_the_hub_cache(monkeypatch, tmp_path):
    """The hub cannot be reached here: ``tests.hub_fake`` stands in for its listing and
    download, and the offline proof is recorded (tests/test_day_one.py runs it for real)."""
    hub = install_fake_hub(monkeypatch, tmp_path / "hf-cache")
    repo = tmp_path / "blip-base"
    for name in ("config.json", "vocab.txt", "model.safetensors", "pytorch_model.bin",
                 "tf_model.h5"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text("{}")
    hub.add("Salesforce/blip-itm-base-coco", repo)
    proved: list[str] = []
    monkeypatch.setattr(presets, "prove_loads_offline", lambda name, weights: proved.append(name))
    assert pull("blip-base") == {
        "Salesforce/blip-itm-base-coco": ["config.json", "vocab.txt", "model.safetensors"]}
    assert proved == ["blip-base"]
    assert pull("demo") == {} and proved == ["blip-base"]
    with pytest.raises(ValueError, match="No preset 'nope'"):
        pull("nope")


def test_offline_new_store_says_one_sentence_before_loading_anything(tmp_path):
    """Offline with an empty cache, the default preset is refused at once: one sentence
    naming the preset, `models pull` and `--model demo`; no torch, no store."""
    make_image(tmp_path / "photos" / "a.png", seed=1)
    store = tmp_path / "store"
    script = ("import sys\nfrom twinrank.cli import app\n"
              f"try:\n    app(['ingest', {str(tmp_path / 'photos')!r}, '--store', "
              f"{str(store)!r}, '--no-progress'])\n"
              "except SystemExit as done:\n"
              "    print('EXIT', done.code, 'torch' in sys.modules, "
              "'transformers' in sys.modules)\n")
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env=env)
    assert "EXIT 1 False False" in done.stdout, done.stdout + done.stderr
    error = done.stderr.strip()
    assert error.count("\n") == 0 and "Traceback" not in error
    assert "blip-base" in error and "twinrank models pull blip-base" in error
    assert "--model demo" in error
    assert not store.exists()


@pytest.fixture
def untrained_store(tmp_path, monkeypatch) -> Path:
    """A collection of the tiny random model, searched with the untrained switch off."""
    for i in range(4):
        make_image(tmp_path / "photos" / f"{i}.png", seed=i)
    result = CliRunner().invoke(app, ["ingest", str(tmp_path / "photos"), "--store",
                                      str(tmp_path / "store"), "--model", "twinrank-tiny",
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    monkeypatch.delenv(UNTRAINED, raising=False)
    return tmp_path / "store"


def test_client_defaults_to_no_reranker_with_a_note(untrained_store):
    with SearchClient(untrained_store) as client:
        assert client.reranker is None
        assert "no trained reranker" in (client.reranker_note or "")
        hits = client.search("blocks", k=3)
        assert all(h.rerank_rank is None for h in hits)
    with pytest.raises(UntrainedRerankerError, match="never trained"):
        SearchClient(untrained_store, reranker="fused")


def test_cli_search_says_why_it_does_not_rerank(untrained_store):
    result = CliRunner().invoke(app, ["search", "blocks", "--store", str(untrained_store)])
    assert result.exit_code == 0, result.output
    assert "No reranking" in result.output and "no trained reranker" in result.output
    asked = CliRunner().invoke(app, ["search", "blocks", "--store", str(untrained_store),
                                     "--reranker", "fused"])
    assert asked.exit_code == 1 and "never trained" in asked.output
    assert "Traceback" not in asked.output


def test_app_defaults_to_no_reranker_and_says_why(untrained_store, monkeypatch):
    monkeypatch.setenv(STORE_ENV, str(untrained_store))
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    assert any("no trained reranker" in info.value for info in at.info)
    assert at.toggle(key="rerank").value is False
    assert "fused" not in at.selectbox(key="reranker").options

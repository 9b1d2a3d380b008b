"""No traps on day one (issue 34, criterion 6): `models pull` fetches what loading needs,
whichever file holds the weights, and proves it by loading with the hub disabled; a cache
an interrupted download left is completed online and named offline; downloads show
progress; a CPU ingest says its rate and time left after its first batch;
`--no-cache-tokens` on a store that caches tokens says so.

The hub cannot be reached here: ``tests.hub_fake`` stands in for its listing and download
(local folders copied into a real cache layout). Everything after the download is real:
the offline proof is a fresh process with ``HF_HUB_OFFLINE=1`` loading a tiny random BLIP
from that cache with transformers.
"""

from __future__ import annotations

import itertools
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from tests.conftest import make_image
from tests.hub_fake import FakeHub, install
from twinrank.cli import app
from twinrank.ingest import progress as ingest_progress
from twinrank.models import create_model, presets
from twinrank.models.blip import _quiet_progress, in_hub_cache, load_blip_itm
from twinrank.models.blip_random import save_random_blip
from twinrank.models.factory import ModelLoadError
from twinrank.models.hub_files import OPEN_CLIP_SUPPORT, OPEN_CLIP_WEIGHTS, files_to_load
from twinrank.store import open_store, read_info

SUPPORT = ["config.json", "processor_config.json", "tokenizer.json", "tokenizer_config.json",
           "vocab.txt"]
DECOYS = ["tf_model.h5", "flax_model.msgpack", "onnx/model.onnx", "onnx/config.json",
          "README.md", ".gitattributes"]


@pytest.fixture(scope="session")
def tiny_blip_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BLIP ITM checkpoint as its hub repository holds it (safetensors)."""
    return save_random_blip(tmp_path_factory.mktemp("blip") / "repo")


def bin_repo(tiny_blip_repo: Path, folder: Path) -> Path:
    """The same checkpoint as an older repository holds it: ``pytorch_model.bin`` weights
    only, next to formats twinrank does not read."""
    shutil.copytree(tiny_blip_repo, folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    for decoy in DECOYS:
        (folder / decoy).parent.mkdir(parents=True, exist_ok=True)
        (folder / decoy).write_bytes(b"not for loading")
    return folder


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeHub:
    return install(monkeypatch, tmp_path / "hf-cache")


def test_files_to_load_take_the_weights_loading_reads_and_nothing_else():
    listing = [*SUPPORT, "model.safetensors", "pytorch_model.bin", *DECOYS]
    assert files_to_load(listing) == [*SUPPORT, "model.safetensors"]
    assert files_to_load([*SUPPORT, "pytorch_model.bin", *DECOYS]) == [*SUPPORT,
                                                                       "pytorch_model.bin"]
    sharded = ["config.json", "pytorch_model.bin.index.json", "pytorch_model-00001-of-00002.bin",
               "pytorch_model-00002-of-00002.bin", "tf_model-00001-of-00002.h5"]
    assert files_to_load(sharded) == sharded[:4]
    assert files_to_load(["config.json", "tf_model.h5"]) == []  # nothing we can load
    laion = ["open_clip_config.json", "open_clip_pytorch_model.bin", "model.safetensors",
             "config.json", "tokenizer.json"]  # an open_clip repo holds a transformers copy too
    assert files_to_load(laion, OPEN_CLIP_WEIGHTS, OPEN_CLIP_SUPPORT) == [
        "open_clip_config.json", "open_clip_pytorch_model.bin"]


def test_pull_of_a_bin_checkpoint_fetches_its_weights_and_loads_offline(
        hub, tiny_blip_repo, tmp_path):
    hub.add("someone/blip-bin", bin_repo(tiny_blip_repo, tmp_path / "bin-repo"))
    result = CliRunner().invoke(app, ["models", "pull", "blip:someone/blip-bin"])
    assert result.exit_code == 0, result.output
    assert hub.cached("someone/blip-bin") == sorted([*SUPPORT, "pytorch_model.bin"])
    assert [d.bars_shown for d in hub.downloads] == [True]  # the download shows progress
    assert "pytorch_model.bin" in result.output
    # the proof ran in a fresh process with HF_HUB_OFFLINE=1 and loaded it from the cache
    assert "blip:someone/blip-bin loads with the hub disabled." in result.output


def test_pull_that_does_not_load_offline_says_so_in_one_sentence(hub, tiny_blip_repo,
                                                                  tmp_path):
    repo = bin_repo(tiny_blip_repo, tmp_path / "cut-short")
    (repo / "pytorch_model.bin").write_bytes(b"the first bytes of a download cut short")
    hub.add("someone/cut-short", repo)
    result = CliRunner().invoke(app, ["models", "pull", "blip:someone/cut-short"])
    assert result.exit_code == 1
    error = result.output.strip()
    assert error.count("\n") == 0 and "Traceback" not in error
    assert "does not load with the hub disabled" in error and "someone/cut-short" in error
    assert "pytorch_model.bin" in error


def test_pull_of_a_repo_without_loadable_weights_downloads_nothing(hub, tmp_path):
    repo = tmp_path / "tf-only"
    repo.mkdir()
    (repo / "config.json").write_text("{}")
    (repo / "tf_model.h5").write_bytes(b"weights in a format twinrank does not read")
    hub.add("someone/tf-only", repo)
    result = CliRunner().invoke(app, ["models", "pull", "blip:someone/tf-only"])
    assert result.exit_code == 1 and not hub.downloads
    assert "holds no weights twinrank can load (model.safetensors or pytorch_model.bin" in (
        result.output)


def test_partial_cache_online_downloads_the_rest_with_progress(hub, tiny_blip_repo,
                                                               monkeypatch):
    hub.add("someone/blip", tiny_blip_repo)
    hub.seed_cache("someone/blip", ["config.json"])  # an interrupted first download
    assert not in_hub_cache("someone/blip")  # config.json alone is not a cached model
    monkeypatch.setattr("twinrank.models.blip.hub_reachable", lambda: True)  # (stand-in)
    model = create_model("blip:someone/blip", device="cpu")
    assert in_hub_cache("someone/blip") and model.model_id.startswith("blip:someone/blip@")
    assert [(d.repo, d.bars_shown) for d in hub.downloads] == [("someone/blip", True)]
    assert "model.safetensors" in hub.downloads[0].patterns


def test_partial_cache_offline_names_what_is_missing_and_the_pull(hub, tiny_blip_repo,
                                                                  monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.add("someone/blip", tiny_blip_repo)
    hub.seed_cache("someone/blip", ["config.json"])
    with pytest.raises(ModelLoadError) as caught:
        load_blip_itm("someone/blip")
    message = str(caught.value)
    assert "\n" not in message and "'someone/blip'" in message
    assert "config.json but no weights: model.safetensors or pytorch_model.bin" in message
    assert "twinrank models pull blip:someone/blip" in message
    blip_base = presets.preset("blip-base").hub_repos[0]
    hub.add(blip_base, tiny_blip_repo)
    hub.seed_cache(blip_base, ["config.json"])
    with pytest.raises(ModelLoadError, match=r"model\.safetensors or pytorch_model\.bin of "
                       r"Salesforce/blip-itm-base-coco\) are not in the Hugging Face cache "
                       r"\(HF_HOME, only its config, from an interrupted download\).*"
                       r"twinrank models pull blip-base"):
        create_model("blip-base", device="cpu")


def test_loading_hides_transformers_bar_but_not_the_download_bars():
    from huggingface_hub.utils import are_progress_bars_disabled
    from transformers.utils import logging as hf_logging

    with _quiet_progress():
        assert not hf_logging.is_progress_bar_enabled()  # no "Loading weights" bar
        assert not are_progress_bars_disabled()  # a download's bars still show
    assert hf_logging.is_progress_bar_enabled()


def test_pull_of_an_open_clip_preset_takes_open_clip_files_only(hub, tmp_path, monkeypatch):
    """ViT-B-32 weights are too large to fake here, so the offline proof is recorded, not
    run (the BLIP tests above run it)."""
    chosen = presets.preset("clip-multilingual")
    laion, text = tmp_path / "laion", tmp_path / "xlmr"
    for folder, names in ((laion, ["open_clip_config.json", "open_clip_pytorch_model.bin",
                                   "model.safetensors", "config.json"]),
                          (text, ["config.json", "tokenizer.json", "sentencepiece.bpe.model",
                                  "model.safetensors", "onnx/model.onnx"])):
        folder.mkdir()
        for name in names:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text("{}")
    hub.add(chosen.weights_repo, laion)
    hub.add(chosen.hub_repos[0], text)
    proved: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(presets, "prove_loads_offline",
                        lambda name, weights: proved.append((name, weights)))
    fetched = presets.pull("clip-multilingual")
    assert fetched == {
        chosen.weights_repo: ["open_clip_config.json", "open_clip_pytorch_model.bin"],
        chosen.hub_repos[0]: ["config.json", "sentencepiece.bpe.model", "tokenizer.json"]}
    assert proved == [("clip-multilingual", ["open_clip_pytorch_model.bin"])]
    assert presets.pull("demo") == {} and len(proved) == 1


def photos(folder: Path, count: int) -> Path:
    for i in range(count):
        make_image(folder / f"{i}.png", seed=i)
    return folder


def slow_clock(seconds_per_batch: float):
    """The progress clock of a machine that takes ``seconds_per_batch`` for the first
    batch (the model is ready at 0)."""
    ticks = itertools.chain([0.0, seconds_per_batch], itertools.count(seconds_per_batch))
    return lambda: next(ticks)


def test_cpu_ingest_says_its_rate_and_time_left_and_the_faster_preset(tmp_path, monkeypatch):
    """The tiny test preset stands in for a slow one: it is given blip-base's faster
    preset, and the clock says its first batch of 2 took 4,000 s."""
    tiny = presets.preset("twinrank-tiny")
    slow = [replace(p, faster_on_cpu="clip-b32") if p is tiny else p for p in presets.PRESETS]
    monkeypatch.setattr(presets, "PRESETS", tuple(slow))
    monkeypatch.setattr(ingest_progress, "clock", slow_clock(4000.0))
    result = CliRunner().invoke(app, ["ingest", str(photos(tmp_path / "photos", 6)), "--store",
                                      str(tmp_path / "store"), "--model", "twinrank-tiny",
                                      "--batch-size", "2", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert result.stderr.count("First batch:") == 1
    assert ("First batch: 0.0005 images/s on the CPU, about 2 h 13 min left for 4 images; the "
            "clip-b32 preset is faster on a CPU (in a new store: --model clip-b32 --store "
            "NEW_FOLDER).") in result.stderr
    assert "added 6" in result.stdout


def test_a_short_ingest_names_no_other_preset(tmp_path, monkeypatch):
    monkeypatch.setattr(ingest_progress, "clock", slow_clock(1.0))
    result = CliRunner().invoke(app, ["ingest", str(photos(tmp_path / "photos", 6)), "--store",
                                      str(tmp_path / "store"), "--model", "twinrank-tiny",
                                      "--batch-size", "2", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "First batch: 2 images/s on the CPU, under a minute left for 4 images." in (
        result.stderr)
    assert "preset is faster" not in result.stderr
    quiet = CliRunner().invoke(app, ["ingest", str(photos(tmp_path / "more", 6)), "--store",
                                     str(tmp_path / "store2"), "--model", "twinrank-tiny",
                                     "--batch-size", "2", "--no-progress"])
    assert quiet.exit_code == 0 and "First batch" not in quiet.output


def test_no_cache_tokens_on_a_caching_store_says_so_and_keeps_caching(tmp_path):
    folder, store = photos(tmp_path / "photos", 3), tmp_path / "store"
    args = ["ingest", str(folder), "--store", str(store), "--model", "twinrank-tiny",
            "--no-progress"]
    assert CliRunner().invoke(app, args).exit_code == 0
    make_image(folder / "new.png", seed=99)
    result = CliRunner().invoke(app, [*args, "--no-cache-tokens"])
    assert result.exit_code == 0, result.output
    assert ("This collection caches reranker tokens; --no-cache-tokens applies only to a new "
            "store (use a new --store).") in result.output
    with open_store(store) as opened:
        ids = [pid for pid, _ in opened.iter_payloads()]
        assert len(ids) == 4 and set(opened.get_tokens(ids)) == set(ids)  # none without
    fresh = CliRunner().invoke(app, ["ingest", str(folder), "--store", str(tmp_path / "lean"),
                                     "--model", "twinrank-tiny", "--no-progress",
                                     "--no-cache-tokens"])
    assert fresh.exit_code == 0 and "caches reranker tokens" not in fresh.output
    info = read_info(tmp_path / "lean")
    assert info is not None and info.token_count == 0

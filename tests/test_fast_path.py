"""The fast query path (ONNX Runtime, no torch) answers as the torch path does.

Real parts throughout: a tiny random twinrank model ingested into real Qdrant Edge, its
query side exported by ``models.export`` and run by ONNX Runtime; the torch path is the
``SearchClient``. Same top-k in the same order, scores within ``TOLERANCE``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import make_image
from twinrank.cli import app
from twinrank.ingest.job import IngestJob, ingest_folder
from twinrank.ingest.runner import IngestConfig
from twinrank.models import DEMO_MODEL, create_model
from twinrank.models.export import export_query_side, record_no_export
from twinrank.models.onnx_files import BPE_VOCAB, FAST_DIR, read_manifest
from twinrank.rerank.fused import FusedReranker
from twinrank.search import SearchClient
from twinrank.search.bpe import ClipBpe
from twinrank.search.fast import (
    FastPathUnavailable,
    FastQueryModel,
    FastSearch,
    fast_search,
    open_query_side,
    run_fast_search,
)
from twinrank.store import open_store, read_info
from twinrank.store.filters import SearchFilter

TOLERANCE = 1e-4  # fp32 in both; measured differences are ~1e-6
QUERIES = ["a red circle left of a blue square", "blue", "two small green triangles above "
           "a large yellow star next to a purple cross"]


@pytest.fixture(scope="module")
def fast_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 24-image collection of the tiny model, ingested as the CLI does (export included)."""
    root = tmp_path_factory.mktemp("fast")
    for i in range(24):
        make_image(root / "photos" / ("a" if i % 2 else "b") / f"{i}.png", seed=100 + i)
    ingest_folder(IngestJob(IngestConfig(root / "photos", progress=False), root / "store",
                            model="twinrank-tiny"))
    return root / "store"


def test_tokenizer_gives_open_clips_ids() -> None:
    from open_clip.tokenizer import SimpleTokenizer

    texts = ["a red circle", "It's 2021: café &amp; Über naïve 東京!!?", "cafÃ© mojibake",
             "  many   spaces\tand\nlines ", "", "word " * 100, "don't STOP_believing"]
    # plain ASCII skips ftfy: every printable character, entities and escapes among them
    rng = np.random.default_rng(0)
    printable = [chr(c) for c in range(32, 127)] + ["&amp;", "&lt;", "\x1b[31m", "\r\n", "\x7f"]
    texts += ["".join(rng.choice(printable, size=int(rng.integers(1, 30)))) for _ in range(300)]
    theirs = SimpleTokenizer(context_length=77)(texts).numpy()
    vocab = Path(__import__("open_clip").__file__).parent / BPE_VOCAB
    with pytest.warns(UserWarning, match="longer than the model reads"):  # "word " * 100
        ours = ClipBpe(vocab, 77)(texts)
    assert np.array_equal(ours, theirs)


def test_ingest_writes_the_collections_export(fast_store: Path) -> None:
    manifest = read_manifest(fast_store / FAST_DIR)
    info = read_info(fast_store)
    assert manifest is not None and info is not None
    assert manifest["model_id"] == info.model_id
    assert (fast_store / FAST_DIR / manifest["text_graph"]).is_file()


@pytest.mark.parametrize("rerank", [True, False])
def test_fast_search_equals_the_torch_search(fast_store: Path, rerank: bool) -> None:
    only_a = SearchFilter(folder=str(next((fast_store.parent / "photos").glob("a"))))
    with SearchClient(fast_store) as client:
        fast = open_query_side(fast_store, client.store.info)
        for query in QUERIES:
            for filters in (None, only_a):
                want = client.search(query, k=8, rerank=rerank, filters=filters)
                got = fast_search(client.store, fast, FastSearch(
                    query, k=8, rerank=rerank, rerank_top_k=20, filters=filters))
                assert [h.id for h in got] == [h.id for h in want]
                assert [h.bi_rank for h in got] == [h.bi_rank for h in want]
                assert np.allclose([h.score for h in got], [h.score for h in want],
                                   atol=TOLERANCE)
                if rerank:
                    assert all(h.rerank_rank is not None for h in got)
                    assert np.allclose([h.rerank_score for h in got],
                                       [h.rerank_score for h in want], atol=TOLERANCE)


def test_demo_models_export_matches_its_towers(tmp_path: Path) -> None:
    """The shipped demo model (pooled head, its own context length) exports exactly."""
    model = create_model(DEMO_MODEL, device="cpu")
    export_query_side(model, tmp_path / FAST_DIR)
    fast = FastQueryModel(tmp_path / FAST_DIR, read_manifest(tmp_path / FAST_DIR) or {})
    texts = ["a small red circle left of a large blue square", "green"]
    vectors, tokens, mask = fast.encode(texts)
    with torch.inference_mode():
        want = model.encode_text(model.tokenize(texts))
        length = int(mask[1].sum())
        image_tokens = torch.randn(5, *model.token_shape)
        logits = model.match_logit(want.text_tokens[1:, :length].expand(5, -1, -1),
                                   want.text_mask[1:, :length].expand(5, -1), image_tokens)
    assert np.array_equal(mask, want.text_mask.numpy())
    assert np.allclose(vectors, want.text_vector.numpy(), atol=TOLERANCE)
    assert np.allclose(tokens, want.text_tokens.numpy(), atol=TOLERANCE)
    got = fast.match_logits(tokens[1:, :length], mask[1:, :length], image_tokens.numpy())
    assert np.allclose(got, logits.numpy(), atol=TOLERANCE)
    # the torch path's reranker (its one-query shortcut) scores what the export scores
    reranker = FusedReranker(model, None, precision="fp32")
    assert np.allclose(reranker.score_tokens(texts[1], image_tokens), got, atol=TOLERANCE)


def test_an_export_of_another_model_is_refused(fast_store: Path, tmp_path: Path) -> None:
    copy = tmp_path / "store"
    shutil.copytree(fast_store, copy)
    manifest_file = copy / FAST_DIR / "fast.json"
    manifest = json.loads(manifest_file.read_text())
    manifest_file.write_text(json.dumps(manifest | {"model_id": "ViT-B-32:random:0"}))
    with pytest.raises(FastPathUnavailable, match="ViT-B-32:random:0"):
        run_fast_search(copy, FastSearch("a red circle"))
    result = CliRunner().invoke(app, ["search", "a red circle", "--store", str(copy), "-k", "3"])
    assert result.exit_code == 0, result.output
    assert "Fast search unavailable" in result.output  # one line, then the torch answer
    assert len([line for line in result.output.splitlines() if ".png" in line]) == 3


def test_a_damaged_export_falls_back_with_one_line(fast_store: Path, tmp_path: Path) -> None:
    copy = tmp_path / "store"
    shutil.copytree(fast_store, copy)
    (copy / FAST_DIR / "text.onnx").write_bytes(b"not an onnx graph")
    result = CliRunner().invoke(app, ["search", "a red circle", "--store", str(copy), "-k", "3"])
    assert result.exit_code == 0, result.output
    assert "cannot be read" in result.output and "Traceback" not in result.output
    assert len([line for line in result.output.splitlines() if ".png" in line]) == 3


def test_a_model_without_a_fast_path_is_recorded_and_refused(fast_store: Path,
                                                             tmp_path: Path) -> None:
    copy = tmp_path / "store"
    shutil.copytree(fast_store, copy)
    model = create_model("twinrank-tiny", device="cpu")
    record_no_export(model, copy / FAST_DIR, "BLIP models have no fast path yet")
    with pytest.raises(FastPathUnavailable, match="BLIP models have no fast path"):
        run_fast_search(copy, FastSearch("a red circle"))


def test_cli_search_answers_without_importing_torch(fast_store: Path) -> None:
    """The whole `twinrank search` process: same hits as the torch path, and no torch."""
    script = ("import sys, json\n"
              "from twinrank.cli import app\n"
              f"app(['search', 'a red circle', '--store', {str(fast_store)!r}, '-k', '5', "
              "'--json'], standalone_mode=False)\n"
              "print('TORCH', 'torch' in sys.modules, 'onnxruntime' in sys.modules,\n"
              "      'ftfy' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=240, check=True)
    assert "TORCH False True False" in done.stdout, done.stdout + done.stderr
    rows = json.loads(done.stdout[: done.stdout.rindex("]") + 1])
    with open_store(fast_store) as store, SearchClient(store) as client:
        want = client.search("a red circle", k=5)
    assert [row["id"] for row in rows] == [h.id for h in want]
    assert np.allclose([row["score"] for row in rows], [h.score for h in want], atol=TOLERANCE)


def test_no_collection_is_said_once_without_a_fast_path_line(tmp_path: Path) -> None:
    """A store folder with no collection: the one sentence that says so, not first a line
    about the fast path being unavailable there."""
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(app, ["search", "a red circle", "--store",
                                      str(tmp_path / "empty")])
    assert result.exit_code == 1, result.output
    assert "Fast search unavailable" not in result.output
    assert "No twinrank collection" in result.output and "Traceback" not in result.output


def test_a_blip_collection_searches_without_torch_as_the_torch_path_does(tmp_path: Path) -> None:
    """BLIP's query side in numpy (models.blip_query), written into fast/ at ingest: the
    whole `twinrank search` process loads no torch and gives the torch client's hits and
    scores (ITM logit + ITC cosine, the authors' recipe)."""
    from twinrank.models.blip_random import save_random_blip

    blip = save_random_blip(tmp_path / "blip", "tiny", init_std=0.3)
    photos = tmp_path / "photos"
    for i in range(8):
        make_image(photos / f"b{i}.png", seed=900 + i)
    store = tmp_path / "store"
    done = CliRunner().invoke(app, ["ingest", str(photos), "--store", str(store), "--model",
                                    f"blip:{blip}", "--precision", "fp32", "--no-progress"])
    assert done.exit_code == 0, done.output
    manifest = read_manifest(store / FAST_DIR) or {}
    assert manifest.get("tokenizer") == "bert-wordpiece" and manifest.get("bi_weight") == 1.0
    script = ("import sys, json\n"
              "from twinrank.cli import app\n"
              f"app(['search', 'a red dog on the beach', '--store', {str(store)!r}, '-k', '5', "
              "'--json'], standalone_mode=False)\n"
              "print('TORCH', 'torch' in sys.modules, 'transformers' in sys.modules)\n")
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=240, check=True)
    assert "TORCH False False" in ran.stdout, ran.stdout + ran.stderr
    assert "Fast search unavailable" not in ran.stderr, ran.stderr
    rows = json.loads(ran.stdout[: ran.stdout.rindex("]") + 1])
    with SearchClient(store, device="cpu") as client:
        want = client.search("a red dog on the beach", k=5)
    assert [row["id"] for row in rows] == [h.id for h in want]
    for row, hit in zip(rows, want, strict=True):
        assert row["rerank_score"] == pytest.approx(hit.rerank_score, abs=TOLERANCE)
        assert row["score"] == pytest.approx(hit.rerank_score + hit.bi_score, abs=TOLERANCE)

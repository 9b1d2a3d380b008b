"""`twinrank evaluate --reranker NAME` works for every registered reranker, through the
same Reranker interface search uses (tiny random models; scores are noise, the plumbing is
what is checked)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.test_rerank_itm import save_tiny_blip
from twinrank.captions.data import load_dataset
from twinrank.captions.scenes import ScenesConfig, make_scenes
from twinrank.cli import app
from twinrank.evaluation.encode import encode_corpus
from twinrank.evaluation.harness import HarnessConfig, evaluate_corpus, make_scorer
from twinrank.models import TwinModel
from twinrank.rerank import FusedReranker, RerankQuery, available_rerankers
from twinrank.rerank.base import Candidate
from twinrank.rerank.registry import clear_reranker_cache

N_IMAGES = 6


@pytest.fixture(scope="module")
def scenes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("scenes")
    make_scenes(out, ScenesConfig(n_train=0, n_val=0, n_test=N_IMAGES, n_zeroshot=0,
                                  image_size=32, languages=("en",), captions_per_image=1))
    return out


@pytest.fixture(scope="module")
def blip_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_blip(tmp_path_factory.mktemp("blip") / "tiny-blip")


def spec_for(name: str, blip_folder: Path) -> str:
    return f"blip-itm:{blip_folder}" if name == "blip-itm" else name


@pytest.mark.parametrize("name", [kind.name for kind in available_rerankers()])
def test_evaluate_runs_every_registered_reranker(name, scenes_dir, blip_folder, tmp_path):
    spec = spec_for(name, blip_folder)
    modes = "bi" if name == "none" else "bi,coop"
    result = CliRunner().invoke(app, [
        "evaluate", "--model", "twinrank-tiny", "--data", f"scenes:{scenes_dir}:test",
        "--modes", modes, "--k-sweep", "3", "--reranker", spec, "--latency-queries", "2",
        "--device", "cpu", "--out", str(tmp_path)])
    clear_reranker_cache()
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "evaluation.json").read_text())
    text = json.dumps(report)
    assert "t2i_recall@1" in text
    if name != "none":
        assert "coop@3" in text


def test_evaluate_with_none_and_a_rerank_mode_says_what_to_do(scenes_dir):
    result = CliRunner().invoke(app, [
        "evaluate", "--model", "twinrank-tiny", "--data", f"scenes:{scenes_dir}:test",
        "--modes", "coop", "--reranker", "none", "--latency-queries", "0", "--device", "cpu"])
    assert result.exit_code == 1
    assert "--modes bi" in result.output and "Traceback" not in result.output


def test_harness_scores_through_the_search_path(_tiny_model_once: TwinModel, scenes_dir):
    """The harness's COOP scores are exactly what the reranker returns for the same query
    and candidates, as a search would call it."""
    corpus = encode_corpus(_tiny_model_once, load_dataset(f"scenes:{scenes_dir}:test"))
    scorer = make_scorer(_tiny_model_once, corpus, HarnessConfig(ks=(3,)))
    got = scorer.score_query(0, np.array([2, 0, 1]))
    reranker = FusedReranker(_tiny_model_once, None)  # no cache: tokens from the files
    expected = reranker.score(RerankQuery(corpus.captions[0]),
                              [Candidate(str(i), corpus.image_paths[i]) for i in (2, 0, 1)])
    assert np.allclose(got, expected, atol=1e-4)
    assert evaluate_corpus(_tiny_model_once, corpus, HarnessConfig(ks=(3,), latency_queries=0))

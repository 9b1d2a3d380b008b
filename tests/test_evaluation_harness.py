"""The harness end to end on a few dozen generated scenes with the tiny random model."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from twinrank.captions.data import load_dataset
from twinrank.captions.scenes import ScenesConfig, make_scenes
from twinrank.cli import app
from twinrank.evaluation.encode import EncodedCorpus, encode_corpus
from twinrank.evaluation.harness import CorpusResult, HarnessConfig, evaluate_corpus, evaluate_folds
from twinrank.evaluation.metrics import fold_average, recall_metrics
from twinrank.evaluation.run import plot_inputs
from twinrank.models import TwinModel

N_IMAGES = 16
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def scenes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("scenes")
    make_scenes(out, ScenesConfig(n_train=0, n_val=0, n_test=N_IMAGES, n_zeroshot=0,
                                  image_size=32, languages=("en", "de"), captions_per_image=2))
    return out


@pytest.fixture(scope="module")
def corpus(_tiny_model_once: TwinModel, scenes_dir: Path) -> EncodedCorpus:
    return encode_corpus(_tiny_model_once, load_dataset(f"scenes:{scenes_dir}:test"))


def test_encoding_mirrors_ingest(corpus: EncodedCorpus) -> None:
    assert corpus.n_images == N_IMAGES and corpus.n_texts == 2 * N_IMAGES
    assert corpus.image_tokens.dtype == np.float16  # the store's cache format
    assert np.allclose(np.linalg.norm(corpus.image_vectors, axis=1), 1.0, atol=1e-5)
    assert corpus.text_mask[:, 0].all()
    assert corpus.text_to_image.tolist() == np.repeat(np.arange(N_IMAGES), 2).tolist()


def test_all_modes_agree_where_they_must(_tiny_model_once: TwinModel,
                                         corpus: EncodedCorpus) -> None:
    config = HarnessConfig(ks=(1, 5, N_IMAGES, 2 * N_IMAGES), latency_queries=3,
                           ce_latency_queries=2, warmup=1)
    result = evaluate_corpus(_tiny_model_once, corpus, config)
    table = result.tables["all"]
    assert table["coop@1"] == table["bi"]  # one candidate: nothing to reorder
    # with every image (or every caption) reranked, COOP is the cross-encoder over all pairs
    for key in ("t2i_recall@1", "t2i_recall@5", "t2i_recall@10"):
        assert table[f"coop@{N_IMAGES}"][key] == pytest.approx(table["cross-all"][key])
    for key in ("i2t_recall@1", "i2t_recall@5", "i2t_recall@10"):
        assert table[f"coop@{2 * N_IMAGES}"][key] == pytest.approx(table["cross-all"][key])
    assert result.info["ce_all_pairs"] == 2 * N_IMAGES * N_IMAGES * 2
    costs = result.latency["modes"]
    assert costs["cross-all"]["pairs_per_query"] == N_IMAGES
    assert costs["coop@5"]["pairs_per_query"] == 5 and costs["bi"]["pairs_per_query"] == 0
    assert costs["coop@5"]["rerank_cost_vs_ce_all"] > 0
    stages = result.latency["stages"]
    assert {"text_encode", "vector_search", "rerank@5", "ce_all"} <= set(stages)
    assert stages["text_encode"]["count"] == 3 and stages["ce_all"]["count"] == 2
    assert result.sweep[5]["t2i_recall@1"] == table["coop@5"]["t2i_recall@1"]
    assert "rerank_ms_p50" in result.sweep[5]


def test_a_huge_bi_weight_is_the_bi_encoder_order(_tiny_model_once: TwinModel,
                                                  corpus: EncodedCorpus) -> None:
    config = HarnessConfig(modes=("bi", "coop"), ks=(5,), bi_weight=1e6, latency_queries=0)
    table = evaluate_corpus(_tiny_model_once, corpus, config).tables["all"]
    assert table["coop@5"] == table["bi"]


def test_folds_are_separate_corpora_averaged(_tiny_model_once: TwinModel,
                                             corpus: EncodedCorpus) -> None:
    config = HarnessConfig(modes=("bi", "coop"), ks=(3,), latency_queries=0)
    folded = evaluate_folds(_tiny_model_once, corpus, 2, config)
    halves = [evaluate_corpus(_tiny_model_once, corpus.select_images(range(s, s + 8)), config)
              for s in (0, 8)]
    for mode in ("bi", "coop@3"):
        expected = {key: np.mean([h.tables["all"][mode][key] for h in halves])
                    for key in halves[0].tables["all"][mode]}
        assert folded.tables["all"][mode] == pytest.approx(expected)
    by_metrics = fold_average(partial(recall_metrics), corpus.bi_scores(), corpus.text_to_image,
                              n_folds=2, fold_size=8)
    assert folded.tables["all"]["bi"] == pytest.approx(by_metrics)
    assert folded.info["folds"] == 2 and folded.info["n_images"] == 8
    with pytest.raises(ValueError, match="equal folds"):
        evaluate_folds(_tiny_model_once, corpus, 3, config)


def test_qdrant_edge_first_stage_matches_exact_search(_tiny_model_once: TwinModel,
                                                      corpus: EncodedCorpus) -> None:
    config = HarnessConfig(modes=("bi", "coop"), ks=(5,), latency_queries=3, warmup=1,
                           search_backend="qdrant-edge")
    latency = evaluate_corpus(_tiny_model_once, corpus, config).latency
    assert latency["search_backend"] == "qdrant-edge"
    assert latency["search_topk_overlap_with_exact"] == 1.0


def test_cli_writes_table_json_and_plots(scenes_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, [
        "evaluate", "--model", "twinrank-tiny", "--data", f"en=scenes:{scenes_dir}:test:en",
        "--data", f"de=scenes:{scenes_dir}:test:de", "--k-sweep", "2,5", "--ce-queries", "8",
        "--latency-queries", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "== en: 16 images, 32 captions" in result.output and "== de:" in result.output
    assert "cross-all" in result.output and "cost per query" in result.output
    payload = json.loads((out / "evaluation.json").read_text())
    assert set(payload["datasets"]) == {"en", "de"}
    en = payload["datasets"]["en"]
    assert set(en["tables"]["ce_subset"]) == {"bi", "coop@2", "coop@5", "cross-all"}
    assert set(en["sweep"]) == {"2", "5"}
    pngs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert pngs == [f"{d}/sweep_{m}.png" for d in ("00-en", "01-de")
                    for m in ("i2t_recall_at_1", "rerank_ms_p50", "t2i_recall_at_1")]
    assert all(p.read_bytes()[:8] == PNG for p in out.rglob("*.png"))


def test_plots_draw_curve_and_references_from_the_same_queries() -> None:
    # CE-all ran on a sample of captions only: the t2i plot must compare COOP@k, bi and
    # CE-all on that sample (not a curve over all captions against lines from a few); i2t,
    # which the sample lacks, is drawn from all queries.
    t2i, i2t = "t2i_recall@1", "i2t_recall@1"
    tables = {
        "all": {"bi": {t2i: 14.0, i2t: 13.0}, "coop@5": {t2i: 24.0, i2t: 17.0},
                "coop@20": {t2i: 27.0, i2t: 22.0}},
        "ce_subset": {"bi": {t2i: 17.5, i2t: None}, "coop@5": {t2i: 21.0, i2t: None},
                      "coop@20": {t2i: 25.0, i2t: None}, "cross-all": {t2i: 25.0, i2t: None}},
    }
    sweep = {5: {**tables["all"]["coop@5"], "rerank_ms_p50": 3.0},
             20: {**tables["all"]["coop@20"], "rerank_ms_p50": 6.0}}
    result = CorpusResult(tables, sweep, {"modes": {"cross-all": {"rerank_ms_p50": 600.0}}}, {})
    curve, refs = plot_inputs(result, t2i)
    assert {k: v[t2i] for k, v in curve.items()} == {5: 21.0, 20: 25.0}
    assert refs["bi"][t2i] == 17.5 and refs["cross-all"][t2i] == 25.0
    assert curve[20]["rerank_ms_p50"] == 6.0 and refs["cross-all"]["rerank_ms_p50"] == 600.0
    curve, refs = plot_inputs(result, i2t)
    assert {k: v[i2t] for k, v in curve.items()} == {5: 17.0, 20: 22.0}
    assert refs["bi"][i2t] == 13.0 and refs["cross-all"].get(i2t) is None


def test_cli_refuses_cross_all_above_the_limit(scenes_dir: Path) -> None:
    result = CliRunner().invoke(app, [
        "evaluate", "--model", "twinrank-tiny", "--data", f"scenes:{scenes_dir}:test",
        "--ce-all-limit", "100", "--latency-queries", "0"])
    assert result.exit_code == 1
    assert "1024 pairs" in result.output and "--allow-ce-all" in result.output
    assert "Traceback" not in result.output

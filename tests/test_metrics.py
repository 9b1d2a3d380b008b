"""Recall@K, COOP ranking, fold averaging, guards and reports, on matrices checked by hand."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from twinrank.evaluation.metrics import (
    ce_all_guard,
    combine_scores,
    coop_ranking,
    fold_average,
    i2t_ranks,
    i2t_recall,
    latency_summary,
    recall_metrics,
    t2i_ranks,
    t2i_recall,
    topk_indices,
)
from twinrank.evaluation.report import format_table, plot_sweep, write_json

# 3 images, 2 captions each; rows are captions, columns images.
CAPTION_IMAGE = np.array([0, 0, 1, 1, 2, 2])
SCORES = np.array(
    [
        [0.9, 0.1, 0.2],  # image 0 first           -> t2i rank 0
        [0.3, 0.8, 0.1],  # image 0 second          -> rank 1
        [0.1, 0.2, 0.7],  # image 1 second          -> rank 1
        [0.5, 0.4, 0.6],  # image 1 last            -> rank 2
        [0.2, 0.3, 0.4],  # image 2 first           -> rank 0
        [0.6, 0.5, 0.1],  # image 2 last            -> rank 2
    ]
)


def test_t2i_ranks_and_recall_match_hand_ranking() -> None:
    assert t2i_ranks(SCORES, CAPTION_IMAGE).tolist() == [0, 1, 1, 2, 0, 2]
    recall = t2i_recall(SCORES, CAPTION_IMAGE, ks=(1, 2, 3))
    assert recall == pytest.approx(
        {"t2i_recall@1": 100 * 2 / 6, "t2i_recall@2": 100 * 4 / 6, "t2i_recall@3": 100.0}
    )


def test_i2t_counts_an_image_as_hit_when_any_caption_is_in_top_k() -> None:
    # Image columns sorted by score, own captions marked *:
    # image 0: 0.9* 0.6 0.5 0.3* ...  -> best caption first        -> rank 0
    # image 1: 0.8 0.5 0.4* 0.3 0.2* ... -> best own caption third  -> rank 2
    # image 2: 0.7 0.6 0.4* ...          -> best own caption third  -> rank 2
    assert i2t_ranks(SCORES, CAPTION_IMAGE).tolist() == [0, 2, 2]
    recall = i2t_recall(SCORES, CAPTION_IMAGE, ks=(1, 3))
    assert recall == pytest.approx({"i2t_recall@1": 100 / 3, "i2t_recall@3": 100.0})


def test_recall_metrics_reports_both_directions_and_their_mean() -> None:
    metrics = recall_metrics(SCORES, CAPTION_IMAGE)
    six = [metrics[f"{d}_recall@{k}"] for d in ("t2i", "i2t") for k in (1, 5, 10)]
    assert metrics["t2i_recall@1"] == pytest.approx(100 * 2 / 6)
    assert metrics["i2t_recall@1"] == pytest.approx(100 / 3)
    assert metrics["mean_recall"] == pytest.approx(np.mean(six))


def test_a_tie_is_never_a_hit() -> None:
    tied = np.array([[0.5, 0.5, 0.1], [0.2, 0.7, 0.7]])
    captions = np.array([0, 2])
    assert t2i_recall(tied, captions, ks=(1, 2)) == {"t2i_recall@1": 0.0, "t2i_recall@2": 100.0}
    constant = np.zeros((4, 4))
    assert recall_metrics(constant, np.arange(4), ks=(1,))["mean_recall"] == 0.0


def test_tie_between_captions_of_the_same_image_does_not_hurt_i2t() -> None:
    scores = np.array([[0.9, 0.1], [0.9, 0.2], [0.3, 0.8]])
    assert i2t_ranks(scores, np.array([0, 0, 1])).tolist() == [0, 0]


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="text_to_image must have shape"):
        t2i_recall(SCORES, CAPTION_IMAGE[:3])
    with pytest.raises(ValueError, match="outside"):
        t2i_recall(SCORES, CAPTION_IMAGE + 1)
    with pytest.raises(ValueError, match="NaN"):
        t2i_recall(np.full((2, 2), np.nan), np.arange(2))


def test_fold_average_equals_mean_of_manually_sliced_folds() -> None:
    rng = np.random.default_rng(0)
    n_images, fold_size = 20, 4
    captions = rng.permutation(np.repeat(np.arange(n_images), 2))  # 2 captions each, shuffled
    scores = rng.normal(size=(captions.size, n_images))
    scores[np.arange(captions.size), captions] += 1.5  # make recall non-trivial
    metric = partial(recall_metrics, ks=(1, 2))

    averaged = fold_average(metric, scores, captions, n_folds=5, fold_size=fold_size)

    manual = []
    for fold in range(5):
        images = np.arange(fold * fold_size, (fold + 1) * fold_size)
        rows = np.flatnonzero(np.isin(captions, images))
        manual.append(metric(scores[rows][:, images], captions[rows] - images[0]))
    assert averaged == pytest.approx({key: np.mean([m[key] for m in manual]) for key in manual[0]})
    assert averaged != pytest.approx(metric(scores, captions))  # a 4-image corpus is easier


def test_fold_average_refuses_a_corpus_of_the_wrong_size() -> None:
    with pytest.raises(ValueError, match="need exactly 20 images"):
        fold_average(recall_metrics, np.eye(19), np.arange(19), n_folds=5, fold_size=4)


def test_topk_indices_is_stable_on_ties_and_clips_k() -> None:
    scores = np.array([[0.2, 0.9, 0.9, 0.1], [0.0, 0.0, 0.0, 0.0]])
    assert topk_indices(scores, 3).tolist() == [[1, 2, 0], [0, 1, 2]]
    assert topk_indices(scores, 10).shape == (2, 4)


def test_coop_ranking_puts_reranked_top_k_first_in_reranker_order() -> None:
    first = np.array([[0.1, 0.9, 0.5, 0.8, 0.3, 0.7]])  # first-stage order: 1, 3, 5, 2, 4, 0
    top = topk_indices(first, 3)
    assert top.tolist() == [[1, 3, 5]]
    rerank = np.array([[0.2, 3.0, 1.0]])  # reranker prefers 3, then 5, then 1
    combined = coop_ranking(first, rerank, k=3)
    order = np.argsort(-combined[0], kind="stable")
    assert order.tolist() == [3, 5, 1, 2, 4, 0]


def test_coop_ranking_lets_the_reranker_fix_recall_and_keeps_ties_as_ties() -> None:
    first = np.array(
        [[0.9, 0.8, 0.1], [0.7, 0.9, 0.2]]
    )  # caption 0 wants image 1, caption 1 image 1
    captions = np.array([1, 1])
    assert t2i_recall(first, captions, ks=(1,))["t2i_recall@1"] == 50.0
    fixed = coop_ranking(first, np.array([[0.0, 1.0], [1.0, 0.0]]), k=2)
    assert t2i_recall(fixed, captions, ks=(1,))["t2i_recall@1"] == 100.0
    tied = coop_ranking(first, np.array([[1.0, 1.0], [1.0, 1.0]]), k=2)
    assert t2i_recall(tied, captions, ks=(1,))["t2i_recall@1"] == 0.0


def test_coop_ranking_checks_the_reranker_shape() -> None:
    with pytest.raises(ValueError, match=r"shape \(1, 2\)"):
        coop_ranking(np.array([[0.1, 0.2, 0.3]]), np.array([[1.0, 2.0, 3.0]]), k=2)


def test_combine_scores_adds_the_weighted_bi_encoder_score_as_blip_does() -> None:
    first = np.array([[1.0, 3.0], [5.0, 5.0]])  # match logits
    second = np.array([[0.5, 0.25], [-0.5, 1.0]])  # cosines
    assert combine_scores(first, second, 0.0).tolist() == first.tolist()
    assert combine_scores(first, second, 1.0).tolist() == [[1.5, 3.25], [4.5, 6.0]]
    assert combine_scores(first, second, 4.0).tolist() == [[3.0, 4.0], [3.0, 9.0]]
    for bad in (-0.5, float("nan")):
        with pytest.raises(ValueError, match="weight"):
            combine_scores(first, second, bad)


def test_latency_summary_reports_milliseconds() -> None:
    summary = latency_summary([0.001, 0.002, 0.003, 0.010], stage="rerank")
    assert summary["rerank_count"] == 4
    assert summary["rerank_ms_mean"] == pytest.approx(4.0)
    assert summary["rerank_ms_p50"] == pytest.approx(2.5)
    assert summary["rerank_ms_p95"] == pytest.approx(3.0 + 0.85 * 7.0)
    with pytest.raises(ValueError, match="non-empty"):
        latency_summary([])


def test_ce_all_guard_refuses_above_limit_unless_forced() -> None:
    assert ce_all_guard(10, 20, limit=200) == 200
    with pytest.raises(ValueError) as error:
        ce_all_guard(25_000, 5_000, limit=1_000_000)
    message = str(error.value)
    assert "125000000 pairs (25000 queries x 5000 candidates)" in message
    assert "--allow-ce-all" in message and "retrieve-and-rerank" in message
    assert ce_all_guard(25_000, 5_000, limit=1_000_000, force=True) == 125_000_000


def test_format_table_and_write_json(tmp_path: Path) -> None:
    results = {
        "bi": {"t2i_recall@1": 41.5, "rerank_ms_p50": float("nan")},
        "coop@10": {"t2i_recall@1": 50.0, "rerank_ms_p50": 3.25},
    }
    lines = format_table(results).splitlines()
    assert lines[0].split() == ["mode", "t2i_recall@1", "rerank_ms_p50"]
    assert lines[2].split() == ["bi", "41.50", "-"]
    assert lines[3].split() == ["coop@10", "50.00", "3.25"]
    assert len({len(line) for line in lines[1:]}) == 1  # fixed-width columns

    path = write_json(results, tmp_path / "out" / "results.json")
    assert json.loads(path.read_text()) == {
        "bi": {"t2i_recall@1": 41.5, "rerank_ms_p50": None},
        "coop@10": {"t2i_recall@1": 50.0, "rerank_ms_p50": 3.25},
    }


def test_plot_sweep_writes_two_pngs(tmp_path: Path) -> None:
    sweep = {k: {"t2i_recall@1": 40.0 + k, "rerank_ms_p50": 0.5 * k} for k in (5, 10, 20)}
    references = {"bi": {"t2i_recall@1": 41.0}, "cross-all": {"t2i_recall@1": 62.0}}
    paths = plot_sweep(sweep, tmp_path / "plots", references=references)
    assert [p.name for p in paths] == ["sweep_t2i_recall_at_1.png", "sweep_rerank_ms_p50.png"]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 1000
    with pytest.raises(ValueError, match="no 'i2t_recall@1'"):
        plot_sweep(sweep, tmp_path, metric="i2t_recall@1")

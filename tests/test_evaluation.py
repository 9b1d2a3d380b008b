"""The harness's pieces on hand-made data: rank rule, COOP with a known reranker, guards."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from twinrank.captions.data import CaptionedImage
from twinrank.evaluation.encode import EncodedCorpus, limit_captions
from twinrank.evaluation.harness import HarnessConfig, ce_all_pairs, evaluate_corpus
from twinrank.evaluation.metrics import i2t_ranks, t2i_ranks
from twinrank.evaluation.run import get_protocol, split_label
from twinrank.evaluation.scoring import (
    best_positive_ranks,
    i2t_positive,
    recall_from_ranks,
    t2i_positive,
)

# 3 images, 2 captions each (image 0: captions 0,1 ...); rows are captions.
CAPTION_IMAGE = np.array([0, 0, 1, 1, 2, 2])
SCORES = np.array(
    [
        [0.9, 0.1, 0.2],  # own image first                  -> t2i rank 0
        [0.5, 0.5, 0.1],  # tie with image 1 counts against  -> rank 1
        [0.1, 0.2, 0.7],  # own image second                 -> rank 1
        [0.5, 0.4, 0.6],  # own image last                   -> rank 2
        [0.2, 0.3, 0.4],  # own image first                  -> rank 0
        [0.6, 0.4, 0.1],  # own image last                   -> rank 2
    ]
)


def test_t2i_ranks_by_hand_with_a_tie() -> None:
    ranks = best_positive_ranks(SCORES, t2i_positive(np.arange(6), CAPTION_IMAGE, 3))
    assert ranks.tolist() == [0, 1, 1, 2, 0, 2]
    assert recall_from_ranks(ranks, (1, 2), "t2i") == pytest.approx(
        {"t2i_recall@1": 100 * 2 / 6, "t2i_recall@2": 100 * 4 / 6})


def test_i2t_counts_the_best_of_several_captions_by_hand() -> None:
    # image 0 column: 0.9* 0.6 0.5* 0.5 ... -> best own caption first              -> rank 0
    # image 1 column: 0.5 0.4* 0.4 0.3 ...  -> caption 1 above, caption 5 tied     -> rank 2
    # image 2 column: 0.7 0.6 0.4* 0.2 ...  -> two other captions above            -> rank 2
    ranks = best_positive_ranks(SCORES.T, i2t_positive(np.arange(3), CAPTION_IMAGE))
    assert ranks.tolist() == [0, 2, 2]
    assert recall_from_ranks(ranks, (1, 3), "i2t") == pytest.approx(
        {"i2t_recall@1": 100 / 3, "i2t_recall@3": 100.0})


def test_rank_rule_agrees_with_the_metrics_module_on_tied_random_scores() -> None:
    rng = np.random.default_rng(3)
    owners = np.array([0, 0, 0, 1, 2, 2, 4, 4, 4, 4, 5, 1])  # image 3 has no caption
    scores = rng.integers(0, 4, size=(owners.size, 6)).astype(float)  # many ties
    t2i = best_positive_ranks(scores, t2i_positive(np.arange(owners.size), owners, 6))
    assert t2i.tolist() == t2i_ranks(scores, owners).tolist()
    i2t = best_positive_ranks(scores.T, i2t_positive(np.arange(6), owners))
    assert i2t.tolist() == i2t_ranks(scores, owners).tolist()
    assert i2t[3] == -1  # an image without captions is not a query


def test_recall_leaves_out_queries_that_were_not_evaluated() -> None:
    assert recall_from_ranks(np.array([0, -1, 3, -1]), (1, 5), "t2i") == {
        "t2i_recall@1": 50.0, "t2i_recall@5": 100.0}


class OracleScorer:
    """A reranker that knows the answer: 1 for a caption's own image, 0 otherwise."""

    batch_size = 64

    def __init__(self, text_to_image: np.ndarray) -> None:
        self.text_to_image = text_to_image
        self.pairs_scored = 0

    def score(self, text_ids: np.ndarray, image_ids: np.ndarray) -> np.ndarray:
        self.pairs_scored += len(text_ids)
        return (self.text_to_image[text_ids] == image_ids).astype(np.float32)

    def score_query(self, text_id: int, image_ids: np.ndarray) -> np.ndarray:
        return self.score(np.full(len(image_ids), text_id), np.asarray(image_ids))


def _corpus(n_images: int, captions_per_image: int, seed: int = 0) -> EncodedCorpus:
    rng = np.random.default_rng(seed)
    owners = np.repeat(np.arange(n_images), captions_per_image)
    images = rng.normal(size=(n_images, 8))
    texts = images[owners] + rng.normal(scale=1.5, size=(owners.size, 8))  # a noisy bi-encoder
    unit = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    return EncodedCorpus(unit(images), np.zeros((n_images, 2, 4), np.float16), unit(texts),
                         np.zeros((owners.size, 3, 4), np.float32),
                         np.ones((owners.size, 3), bool), owners,
                         tuple(f"caption {i}" for i in range(owners.size)))


def test_coop_with_an_oracle_reranker_turns_bi_recall_at_k_into_recall_at_1() -> None:
    corpus = _corpus(40, 2)
    oracle = OracleScorer(corpus.text_to_image)
    config = HarnessConfig(modes=("bi", "coop", "cross-all"), ks=(1, 5, 10),
                           recall_ks=(1, 5, 10), latency_queries=0)
    result = evaluate_corpus(None, corpus, config, scorer=oracle)  # type: ignore[arg-type]
    table = result.tables["all"]
    bi = table["bi"]
    assert 0 < bi["t2i_recall@1"] < bi["t2i_recall@10"] < 100  # the test is not trivial
    for k in (5, 10):  # reranking the top k fixes every query whose image is in it
        assert table[f"coop@{k}"]["t2i_recall@1"] == pytest.approx(bi[f"t2i_recall@{k}"])
        assert table[f"coop@{k}"]["i2t_recall@1"] == pytest.approx(bi[f"i2t_recall@{k}"])
    assert table["coop@1"] == bi  # reranking one candidate changes nothing
    assert table["cross-all"]["t2i_recall@1"] == 100.0
    assert set(result.sweep) == {1, 5, 10}
    # 80 captions x 10 + 40 images x 10 for COOP, then 80 x 40 + 40 x 80 for cross-all
    assert result.info["coop_pairs_scored"] == 80 * 10 + 40 * 10
    assert result.info["ce_all_pairs"] == 2 * 80 * 40


def test_a_cross_encoder_query_sample_is_compared_on_the_same_queries() -> None:
    corpus = _corpus(30, 3)
    config = HarnessConfig(ks=(5,), ce_queries=12, ce_image_queries=7, latency_queries=0)
    result = evaluate_corpus(None, corpus, config,  # type: ignore[arg-type]
                             scorer=OracleScorer(corpus.text_to_image))
    assert "cross-all" not in result.tables["all"]
    subset = result.tables["ce_subset"]
    assert set(subset) == {"bi", "coop@5", "cross-all"}
    assert result.info["ce_t2i_queries"] == 12 and result.info["ce_i2t_queries"] == 7
    assert result.info["ce_all_pairs"] == 12 * 30 + 7 * 90
    for key, value in subset["bi"].items():  # recall over 12 captions / 7 images
        queries = 12 if key.startswith("t2i") else 7 if key.startswith("i2t") else None
        if queries:
            assert value * queries / 100 == pytest.approx(round(value * queries / 100))


def test_cross_all_guard_refuses_above_the_limit_unless_forced() -> None:
    with pytest.raises(ValueError, match=r"would score 2500 pairs .*--allow-ce-all"):
        ce_all_pairs(20, 50, 10, 150, limit=2000, force=False)
    assert ce_all_pairs(20, 50, 10, 150, limit=2000, force=True) == 2500
    corpus = _corpus(30, 2)
    config = HarnessConfig(modes=("cross-all",), ce_all_limit=100, latency_queries=0)
    with pytest.raises(ValueError, match="3600 pairs"):
        evaluate_corpus(None, corpus, config,  # type: ignore[arg-type]
                        scorer=OracleScorer(corpus.text_to_image))


def test_config_and_protocol_errors_name_the_fix() -> None:
    with pytest.raises(ValueError, match="unknown mode"):
        HarnessConfig(modes=("bi", "rerank"))
    with pytest.raises(ValueError, match="bi_weight"):
        HarnessConfig(bi_weight=-1.0)
    with pytest.raises(ValueError, match="coco5k, coco1k"):
        get_protocol("coco")
    assert get_protocol("coco1k").folds == 5 and get_protocol("f30k").n_images == 1000


def test_dataset_labels_and_caption_limits() -> None:
    assert split_label("zs=scenes:d:zeroshot") == ("zs", "scenes:d:zeroshot")
    assert split_label("scenes:d:test") == ("scenes:d:test", "scenes:d:test")
    assert split_label("data/a=b.jsonl") == ("data/a=b.jsonl", "data/a=b.jsonl")
    records = [CaptionedImage(Path("a.png"), tuple("abcdefg"))]
    assert limit_captions(records, 5)[0].captions == tuple("abcde")


def test_select_images_makes_a_fold_with_its_own_captions() -> None:
    corpus = _corpus(6, 2)
    fold = corpus.select_images([2, 3])
    assert fold.n_images == 2 and fold.n_texts == 4
    assert fold.text_to_image.tolist() == [0, 0, 1, 1]
    assert fold.captions == ("caption 4", "caption 5", "caption 6", "caption 7")
    assert np.array_equal(fold.text_vectors, corpus.text_vectors[4:8])


def _brute_ranks(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Rank of each row's best positive, one row at a time (ties count against it)."""
    ranks = []
    for row, is_positive in zip(scores, positive, strict=True):
        best = row[is_positive].max()
        ranks.append(int(((row >= best) & ~is_positive).sum()))
    return np.array(ranks)


def test_all_true_positives_count_every_image_a_caption_holds_for() -> None:
    corpus = _corpus(30, 2)
    bi = corpus.bi_scores()
    top = bi.argmax(axis=1)
    wrong = [m for m in range(corpus.n_texts) if top[m] != corpus.text_to_image[m]][:12]
    assert len(wrong) >= 8  # the bi-encoder's mistakes become right answers
    pairs = np.array([[m, top[m]] for m in wrong])
    corpus = replace(corpus, also_true=pairs)
    config = HarnessConfig(modes=("bi", "coop", "cross-all"), ks=(5,), latency_queries=0)
    scorer = OracleScorer(corpus.text_to_image)
    own = evaluate_corpus(None, corpus, config, scorer=scorer)  # type: ignore[arg-type]
    true = evaluate_corpus(None, corpus, replace(config, positives="all-true"),  # type: ignore[arg-type]
                           scorer=OracleScorer(corpus.text_to_image))
    gain = true.tables["all"]["bi"]["t2i_recall@1"] - own.tables["all"]["bi"]["t2i_recall@1"]
    assert gain == pytest.approx(100 * len(wrong) / corpus.n_texts)
    assert own.info["also_true_pairs"] == 0 and true.info["also_true_pairs"] == len(wrong)
    # both directions against a one-row-at-a-time count of the same positives
    t2i = np.zeros(bi.shape, bool)
    t2i[np.arange(corpus.n_texts), corpus.text_to_image] = True
    t2i[pairs[:, 0], pairs[:, 1]] = True
    for name, scores, positive in (("t2i", bi, t2i), ("i2t", bi.T, t2i.T)):
        expected = recall_from_ranks(_brute_ranks(scores, positive), (1, 5, 10), name)
        for key, value in expected.items():
            assert true.tables["all"]["bi"][key] == pytest.approx(value)
    # the oracle reranker puts each caption's own image first: a hit under both protocols
    assert true.tables["all"]["cross-all"]["t2i_recall@1"] == 100.0
    assert true.tables["all"]["coop@5"]["t2i_recall@1"] >= true.tables["all"]["bi"][
        "t2i_recall@1"]


def test_also_true_pairs_follow_a_fold_and_the_masks_hold_them() -> None:
    corpus = replace(_corpus(6, 2), also_true=np.array([[0, 4], [5, 1], [9, 3]]))
    fold = corpus.select_images([3, 4, 5])  # captions 6..11 become 0..5
    assert fold.also_true.tolist() == [[3, 0]]  # only (caption 9, image 3) stays inside
    assert t2i_positive(np.array([0, 5]), corpus.text_to_image, 6,
                        corpus.also_true).nonzero()[1].tolist() == [0, 4, 1, 2]
    assert i2t_positive(np.array([1, 4]), corpus.text_to_image,
                        corpus.also_true).nonzero()[1].tolist() == [2, 3, 5, 0, 8, 9]
    with pytest.raises(ValueError, match="positives"):
        HarnessConfig(positives="some")

"""The objectives by hand on tiny inputs, hard-negative mining, and where gradients flow."""

from __future__ import annotations

import math

import pytest
import torch

from twinrank.train.losses import (
    CONTRASTIVE,
    MATCH,
    RANK,
    HardNegatives,
    contrastive_loss,
    match_loss,
    mine_hard_negatives,
    mine_ranked_negatives,
    rank_loss,
    same_image_mask,
)
from twinrank.train.objectives import LossWeights, build_models, compute_losses, listwise_rank_loss


def _ce(logits: list[float], target: int) -> float:
    return -logits[target] + math.log(sum(math.exp(v) for v in logits))


def test_contrastive_loss_matches_a_hand_computation_on_2x2() -> None:
    images = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    texts = torch.tensor([[0.8, 0.6], [0.0, 1.0]])
    scale = 2.0  # logit_scale = log(2)
    # cosines: image x text = [[0.8, 0.0], [0.96, 0.8]], times 2
    logits = [[1.6, 0.0], [1.92, 1.6]]
    image_to_text = (_ce(logits[0], 0) + _ce(logits[1], 1)) / 2
    text_to_image = (_ce([1.6, 1.92], 0) + _ce([0.0, 1.6], 1)) / 2
    expected = (image_to_text + text_to_image) / 2
    loss = contrastive_loss(images, texts, torch.tensor(math.log(scale)))
    assert loss.item() == pytest.approx(expected, abs=1e-5)


def test_contrastive_loss_never_pushes_an_image_from_its_other_captions() -> None:
    images = torch.nn.functional.normalize(torch.randn(3, 4, generator=torch.Generator()
                                                       .manual_seed(0)), dim=-1)
    images[1] = images[0]  # rows 0 and 1 are the same picture with two captions
    texts = torch.nn.functional.normalize(torch.randn(3, 4), dim=-1)
    masked = contrastive_loss(images, texts, torch.tensor(0.0), torch.tensor([7, 7, 3]))
    logits = images @ texts.T  # (3, 3)
    keep = ~same_image_mask(torch.tensor([7, 7, 3])) | torch.eye(3, dtype=torch.bool)
    by_hand = 0.0
    for row in range(3):
        i2t = [logits[row, j].item() for j in range(3) if keep[row, j]]
        t2i = [logits[j, row].item() for j in range(3) if keep[j, row]]
        position = sum(1 for j in range(row) if keep[row, j])
        by_hand += (_ce(i2t, position) + _ce(t2i, position)) / 6
    assert masked.item() == pytest.approx(by_hand, abs=1e-5)
    assert masked.item() != pytest.approx(contrastive_loss(images, texts, torch.tensor(0.0))
                                          .item(), abs=1e-3)


def test_match_loss_matches_a_hand_computation() -> None:
    positives, negatives = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    softplus = lambda x: math.log1p(math.exp(x))  # noqa: E731
    expected = (softplus(-2.0) + softplus(1.0) + softplus(0.5) + softplus(-3.0)) / 4
    assert match_loss(positives, negatives).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_hard_negatives_never_include_the_positive_or_its_other_captions(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    image_ids = torch.randint(0, 5, (16,), generator=generator)
    image_ids[:2] = torch.tensor([0, 1])  # at least two images
    similarity = torch.randn(16, 16, generator=generator)
    similarity.fill_diagonal_(10.0)  # the positive is by far the most similar
    same = same_image_mask(image_ids)
    rows = torch.arange(16)
    for sampler, easy in ((None, 0.0), (torch.Generator().manual_seed(seed), 0.0),
                          (torch.Generator().manual_seed(seed), 0.5)):
        negatives = mine_hard_negatives(similarity, image_ids, sampler, easy_share=easy)
        assert not same[rows, negatives.text_for_image].any()
        assert not same[negatives.image_for_text, rows].any()


def test_hard_negatives_are_the_most_similar_wrong_pairs() -> None:
    similarity = torch.tensor([[0.9, 0.1, 0.7], [0.3, 0.9, 0.2], [0.6, 0.8, 0.9]])
    negatives = mine_hard_negatives(similarity, torch.tensor([0, 1, 2]))
    assert negatives.text_for_image.tolist() == [2, 0, 1]
    assert negatives.image_for_text.tolist() == [2, 2, 0]


@pytest.mark.parametrize("seed", [None, 0, 1])
def test_ranked_negatives_are_distinct_and_never_the_same_image(seed: int | None) -> None:
    image_ids = torch.tensor([0, 0, 1, 2, 3, 4, 5, 5])
    similarity = torch.randn(8, 8, generator=torch.Generator().manual_seed(7))
    sampler = None if seed is None else torch.Generator().manual_seed(seed)
    ranked = mine_ranked_negatives(similarity, image_ids, 5, sampler)
    same = same_image_mask(image_ids)
    for indices, transposed in ((ranked.text_for_image, False), (ranked.image_for_text, True)):
        assert indices.shape == (8, 5)
        for row in range(8):
            picked = indices[row].tolist()
            assert len(set(picked)) == 5
            assert not any(same[row, j] for j in picked), (row, picked, transposed)
    if seed is None:  # without a sampler: the five most similar other-image rows, in order
        masked = similarity.masked_fill(same, float("-inf"))
        assert ranked.text_for_image.tolist() == masked.topk(5, dim=1).indices.tolist()
    assert mine_ranked_negatives(similarity, image_ids, 99).text_for_image.shape == (8, 6)


def test_rank_loss_is_cross_entropy_with_the_positive_first() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 0.0]])
    expected = -(torch.log_softmax(logits, dim=1)[:, 0]).mean()
    assert rank_loss(logits).item() == pytest.approx(expected.item(), abs=1e-6)


def test_joint_rank_loss_scores_each_caption_against_its_look_alikes(tiny_model) -> None:
    models = build_models("joint", tiny_model).train()
    weights = LossWeights(rank=1.0, rank_negatives=2)
    losses = compute_losses("joint", models, *_batch(tiny_model), weights)
    assert set(losses) == {CONTRASTIVE, MATCH, RANK}
    assert _grad_norms(losses[RANK], tiny_model.head) > 0
    assert _grad_norms(losses[RANK], tiny_model.towers.visual) > 0
    # the same value by hand, pair by pair: each caption over its image and look-alikes,
    # each image over its caption and look-alike captions
    pixels, ids, _ = _batch(tiny_model)
    image, text = tiny_model.encode_image(pixels), tiny_model.encode_text(ids)
    ranked = HardNegatives(text_for_image=torch.tensor([[1, 2], [2, 3], [3, 0], [0, 1]]),
                           image_for_text=torch.tensor([[3, 2], [0, 3], [1, 0], [2, 1]]))

    def score(caption: int, picture: int) -> torch.Tensor:
        return tiny_model.match_logit(text.text_tokens[[caption]], text.text_mask[[caption]],
                                      image.image_tokens[[picture]])[0]

    to_image = [torch.stack([score(j, i) for i in [j, *ranked.image_for_text[j].tolist()]])
                for j in range(4)]
    to_text = [torch.stack([score(c, i) for c in [i, *ranked.text_for_image[i].tolist()]])
               for i in range(4)]
    by_hand = (rank_loss(torch.stack(to_image)) + rank_loss(torch.stack(to_text))) / 2
    batched = listwise_rank_loss(tiny_model, image, text, ranked)
    assert batched.item() == pytest.approx(by_hand.item(), abs=1e-5)


def test_a_batch_of_one_image_has_no_negatives() -> None:
    with pytest.raises(ValueError, match="at least two different images"):
        mine_hard_negatives(torch.zeros(2, 2), torch.tensor([4, 4]))


def _batch(model, size: int = 4):
    pixels = torch.randn(size, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ids = model.tokenize([f"a small red circle left of {n} blue squares" for n in range(size)])
    return pixels, ids, torch.arange(size)


def _grad_norms(loss: torch.Tensor, module: torch.nn.Module) -> float:
    params = [p for p in module.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return sum(float(g.abs().sum()) for g in grads if g is not None)


def test_joint_mode_both_losses_reach_the_shared_towers(tiny_model) -> None:
    models = build_models("joint", tiny_model).train()
    losses = compute_losses("joint", models, *_batch(tiny_model), LossWeights())
    assert set(losses) == {CONTRASTIVE, MATCH}
    for tower in (tiny_model.towers.visual, tiny_model.towers.text):
        assert _grad_norms(losses[CONTRASTIVE], tower) > 0
        assert _grad_norms(losses[MATCH], tower) > 0
    assert _grad_norms(losses[MATCH], tiny_model.head) > 0


def test_sep_mode_losses_do_not_cross_between_the_two_models(tiny_model) -> None:
    models = build_models("sep", tiny_model).train()
    bi, cross = models["bi"], models["cross"]
    assert bi.towers is not cross.towers
    losses = compute_losses("sep", models, *_batch(tiny_model), LossWeights())
    assert _grad_norms(losses[CONTRASTIVE], bi.towers) > 0
    assert _grad_norms(losses[CONTRASTIVE], cross) == 0
    assert _grad_norms(losses[MATCH], cross.towers) > 0
    assert _grad_norms(losses[MATCH], bi) == 0


@pytest.mark.parametrize(("mode", "names"), [("bi", {CONTRASTIVE}), ("cross", {MATCH})])
def test_single_modes_train_one_objective(tiny_model, mode: str, names: set[str]) -> None:
    models = build_models(mode, tiny_model)
    assert set(compute_losses(mode, models, *_batch(tiny_model), LossWeights())) == names


def test_unknown_mode_is_a_clear_error(tiny_model) -> None:
    with pytest.raises(ValueError, match="joint, sep, bi, cross"):
        build_models("both", tiny_model)


def test_a_few_steps_lower_the_loss_on_a_fixed_batch(tiny_model) -> None:
    torch.manual_seed(0)
    models = build_models("joint", tiny_model).train()
    batch = _batch(tiny_model, size=6)
    optimizer = torch.optim.AdamW(models.parameters(), lr=1e-3)
    history = []
    for step in range(12):
        generator = torch.Generator().manual_seed(step)
        losses = compute_losses("joint", models, *batch, LossWeights(), generator)
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert history[-1] < 0.7 * history[0]


def test_a_caption_is_never_the_negative_of_an_image_it_is_true_of() -> None:
    sim = torch.tensor([[0.9, 0.8, 0.1], [0.2, 0.9, 0.7], [0.1, 0.6, 0.9]])
    ids = torch.arange(3)
    true_of = torch.zeros(3, 3, dtype=torch.bool)
    true_of[0, 1] = True  # caption 1 also holds for image 0
    before, after = mine_hard_negatives(sim, ids), mine_hard_negatives(sim, true_of)
    assert before.text_for_image.tolist() == [1, 2, 1] and before.image_for_text[1] == 0
    assert after.text_for_image[0] == 2 and after.image_for_text[1] == 2
    ranked = mine_ranked_negatives(sim, true_of, 2)  # image 0 has one wrong caption left
    assert ranked.text_for_image.shape == (3, 1) and ranked.text_for_image[0, 0] == 2
    vectors = torch.nn.functional.normalize(sim, dim=1)
    logits = vectors @ vectors.T
    masked = logits.masked_fill(true_of, float("-inf"))
    targets = torch.arange(3)
    expected = (torch.nn.functional.cross_entropy(masked, targets)
                + torch.nn.functional.cross_entropy(masked.T, targets)) / 2
    loss = contrastive_loss(vectors, vectors, torch.tensor(0.0), true_of)
    assert loss.item() == pytest.approx(expected.item())
    assert loss.item() != pytest.approx(contrastive_loss(vectors, vectors, torch.tensor(0.0),
                                                         ids).item())
    with pytest.raises(ValueError, match="nothing to be a negative|at least two"):
        mine_hard_negatives(sim, torch.ones(3, 3, dtype=torch.bool))

"""The two objectives a TwinModel is fine-tuned with, and the hard-negative miner between them.

- ``contrastive_loss``: the bi-encoder's symmetric InfoNCE over in-batch negatives, with the
  model's learnable temperature (open_clip's ``logit_scale``).
- ``mine_hard_negatives``: for every image a wrong caption, for every caption a wrong image,
  drawn from the batch in proportion to how much the *bi-encoder* likes them, so the
  cross-encoder trains on exactly the confusions it will be asked to fix when reranking.
- ``match_loss``: the cross-encoder's binary image-text matching loss on positives and
  those negatives.
- ``rank_loss`` with ``mine_ranked_negatives``: the reranker's listwise loss, softmax
  cross-entropy of a caption over its image and K mined look-alikes (and of an image over
  its caption and K look-alike captions). Reranking is ranking, and a binary loss with one
  negative per pair teaches little about the order among look-alikes.

Every function takes ``image_ids`` (B,): which image each batch row shows. Rows with the same
id are the same image (several captions of one picture, or the same picture in another
language), so they are never treated as negatives of each other. In their place a (B, B)
bool mask may be given, image rows x caption columns, True where the caption is true of the
image: a caption can hold for another picture (a scene whose unnamed objects happen to
spell it), and taking that picture as its hard negative teaches the model a wrong answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

CONTRASTIVE = "contrastive_loss"
MATCH = "match_loss"
RANK = "rank_loss"


def same_image_mask(image_ids: torch.Tensor) -> torch.Tensor:
    """(B, B) True where rows i and j show the same image (the diagonal included).

    >>> same_image_mask(torch.tensor([0, 0, 1])).int().tolist()
    [[1, 1, 0], [1, 1, 0], [0, 0, 1]]
    """
    return image_ids[:, None] == image_ids[None, :]


def positive_mask(image_ids: torch.Tensor) -> torch.Tensor:
    """(B, B) image x caption mask of pairs that are not negatives: ``same_image_mask`` of
    (B,) ids, or the given (B, B) mask with its diagonal set.

    >>> positive_mask(torch.tensor([[False, True], [False, False]])).int().tolist()
    [[1, 1], [0, 1]]
    """
    if image_ids.ndim == 1:
        return same_image_mask(image_ids)
    if image_ids.ndim != 2 or image_ids.shape[0] != image_ids.shape[1]:
        raise ValueError(f"expected (B,) image ids or a (B, B) mask, got {tuple(image_ids.shape)}")
    return image_ids.bool() | torch.eye(image_ids.shape[0], dtype=torch.bool,
                                        device=image_ids.device)


def contrastive_loss(
    image_vectors: torch.Tensor,
    text_vectors: torch.Tensor,
    logit_scale: torch.Tensor,
    image_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE: mean of image->text and text->image cross-entropy.

    ``image_vectors`` and ``text_vectors`` are (B, D) and L2-normalised; row i of each is a
    positive pair. ``logit_scale`` is the log of the inverse temperature, as open_clip keeps
    it. Other rows of the same image are masked out of the softmax rather than counted as
    negatives (the InfoNCE of a batch with duplicated images would otherwise push a
    picture away from its own captions).

    >>> v = torch.eye(2)
    >>> round(contrastive_loss(v, v, torch.tensor(0.0)).item(), 4)  # log(1 + e^-1)
    0.3133
    """
    logits = logit_scale.exp() * image_vectors @ text_vectors.T  # (B, B) image x text
    if image_ids is not None:
        others = positive_mask(image_ids.to(logits.device)).clone()
        others.fill_diagonal_(False)
        logits = logits.masked_fill(others, float("-inf"))
    targets = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


@dataclass(frozen=True)
class HardNegatives:
    """Batch row indices: ``text_for_image[i]`` is a wrong caption row for image row i,
    ``image_for_text[j]`` a wrong image row for caption row j."""

    text_for_image: torch.Tensor  # (B,)
    image_for_text: torch.Tensor  # (B,)


def mine_hard_negatives(
    similarity: torch.Tensor,
    image_ids: torch.Tensor,
    generator: torch.Generator | None = None,
    temperature: float = 0.05,
    easy_share: float = 0.0,
) -> HardNegatives:
    """Draw one hard negative per row in each direction from bi-encoder similarities.

    ``similarity`` is (B, B), image rows x text columns (cosines). Negatives are sampled
    with probability softmax(similarity / temperature) over the rows of *other* images
    (as in ALBEF): mostly the closest look-alike, sometimes another, so the cross-encoder
    does not only ever see one kind of mistake. With ``generator=None`` the argmax is taken.
    The positive, and every other caption of the same image, has probability zero.

    ``easy_share`` of the rows (drawn with ``generator``) get a uniformly random wrong pair
    instead: a head trained from scratch only on look-alikes the bi-encoder cannot tell
    apart never leaves the match prior, while a share of easy pairs lets it start.

    >>> sim = torch.tensor([[0.9, 0.8, 0.1], [0.2, 0.9, 0.7], [0.1, 0.6, 0.9]])
    >>> negatives = mine_hard_negatives(sim, torch.tensor([0, 1, 2]))
    >>> negatives.text_for_image.tolist(), negatives.image_for_text.tolist()
    ([1, 2, 1], [1, 0, 1])
    """
    similarity = similarity.detach().float()
    same = _negatives_mask(image_ids.to(similarity.device))
    masked = (similarity / temperature).masked_fill(same, float("-inf"))  # (B, B)
    if easy_share > 0 and generator is not None:
        easy = torch.rand(masked.shape[0], 1, generator=generator) < easy_share  # (B, 1)
        uniform = torch.zeros_like(masked).masked_fill(same, float("-inf"))
        masked = torch.where(easy.to(masked.device), uniform, masked)
        masked_t = torch.where(easy.to(masked.device), uniform.T, (similarity.T / temperature)
                               .masked_fill(same.T, float("-inf")))
    else:
        masked_t = masked.T
    return HardNegatives(
        text_for_image=_draw(masked, generator),
        image_for_text=_draw(masked_t, generator),
    )


def _negatives_mask(image_ids: torch.Tensor) -> torch.Tensor:
    """``positive_mask``, refused when some row or column has nothing to be a negative."""
    same = positive_mask(image_ids)
    if bool(same.all(dim=1).any() or same.all(dim=0).any()):
        raise ValueError("a batch needs at least two different images to mine negatives from; "
                         "use a larger batch or a dataset with more than one image")
    return same


def _draw(masked_logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    if generator is None:
        return masked_logits.argmax(dim=1)
    weights = torch.softmax(masked_logits, dim=1).cpu()  # (B, B), zero on positives
    return torch.multinomial(weights, 1, generator=generator).squeeze(1).to(masked_logits.device)


def match_loss(positive_logits: torch.Tensor, negative_logits: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of match logits: positives labelled 1, negatives 0.

    All pairs count equally (with one negative per direction, a batch holds one positive
    for every two negatives).

    >>> round(match_loss(torch.tensor([0.0]), torch.tensor([0.0])).item(), 4)  # log 2
    0.6931
    """
    logits = torch.cat([positive_logits, negative_logits])
    labels = torch.cat([torch.ones_like(positive_logits), torch.zeros_like(negative_logits)])
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float())


def mine_ranked_negatives(
    similarity: torch.Tensor,
    image_ids: torch.Tensor,
    count: int,
    generator: torch.Generator | None = None,
    temperature: float = 0.05,
) -> HardNegatives:
    """``count`` distinct hard negatives per row in each direction: (B, K) row indices.

    Drawn without replacement with probability softmax(similarity / temperature) over the
    rows of other images (Gumbel top-k), or the top ``count`` with ``generator=None``.
    Rows of the same image never appear; ``count`` is capped by the fewest other images
    any row has.

    >>> sim = torch.tensor([[0.9, 0.8, 0.1], [0.2, 0.9, 0.7], [0.1, 0.6, 0.9]])
    >>> negatives = mine_ranked_negatives(sim, torch.tensor([0, 1, 2]), 2)
    >>> negatives.text_for_image.tolist(), negatives.image_for_text.tolist()
    ([[1, 2], [2, 0], [1, 0]], [[1, 2], [0, 2], [1, 0]])
    """
    similarity = similarity.detach().float()
    same = _negatives_mask(image_ids.to(similarity.device))
    count = min(count, int((~same).sum(dim=1).min()), int((~same).sum(dim=0).min()))
    masked = (similarity / temperature).masked_fill(same, float("-inf"))  # (B, B)
    return HardNegatives(
        text_for_image=_draw_k(masked, count, generator),
        image_for_text=_draw_k(masked.T, count, generator),
    )


def _draw_k(masked_logits: torch.Tensor, count: int,
            generator: torch.Generator | None) -> torch.Tensor:
    if generator is not None:
        uniform = torch.rand(masked_logits.shape, generator=generator).to(masked_logits.device)
        gumbel = -torch.log(-torch.log(uniform.clamp(1e-9, 1 - 1e-9)))
        masked_logits = masked_logits + gumbel
    return masked_logits.topk(count, dim=1).indices


def rank_loss(logits: torch.Tensor) -> torch.Tensor:
    """Listwise loss: softmax cross-entropy over (N, 1 + K) logits, the positive in column 0.

    >>> round(rank_loss(torch.zeros(1, 4)).item(), 4)  # log 4
    1.3863
    """
    targets = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits.float(), targets)


def total_loss(losses: dict[str, torch.Tensor]) -> torch.Tensor:
    """The quantity optimised: the sum of the named (already weighted) losses."""
    return torch.stack(list(losses.values())).sum()

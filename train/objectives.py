"""What each training mode optimises, as a dict of named losses (open_clip's ``clip_task``).

- ``joint``: one TwinModel; contrastive loss on its vectors *and* match loss on its fusion
  head, so both reach the shared towers. Hard negatives come from its own similarities.
- ``sep``: two independent TwinModels. ``bi`` learns only the contrastive loss; ``cross``
  only the match loss, with hard negatives mined from the bi-encoder's similarities
  (detached: an index choice, no gradient crosses between the two).
- ``bi``: contrastive loss alone. ``cross``: match loss alone, negatives from its own
  (untrained) similarities.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from twinrank.models import ImageEncoding, TextEncoding, TwinModel
from twinrank.models.blip import BlipTwinModel
from twinrank.models.pair import SepTwinModel
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
)

MODES = ("joint", "sep", "bi", "cross")


@dataclass(frozen=True)
class LossWeights:
    contrastive: float = 1.0
    match: float = 1.0
    easy_negatives: float = 0.0  # share of match negatives drawn at random, not mined
    rank: float = 0.0  # weight of the listwise rank loss (0: not computed)
    rank_negatives: int = 7  # look-alikes per row in the rank loss


def build_models(mode: str, base: TwinModel) -> nn.ModuleDict:
    """The trainable models of a mode: ``{"twin": m}``, or ``{"bi": m, "cross": copy}`` (SEP).

    SEP's two models start from the same weights (the same pretrained checkpoint, or the
    same seeded random initialisation), then never share anything.
    """
    if mode not in MODES:
        raise ValueError(f"unknown training mode {mode!r}; use one of {', '.join(MODES)}")
    if mode == "sep" and isinstance(base, BlipTwinModel):
        raise ValueError("--mode sep needs an open_clip model: BLIP's two heads share one "
                         "backbone by design; fine-tune it with --mode joint")
    if mode == "sep":
        return nn.ModuleDict({"bi": base, "cross": copy.deepcopy(base)})
    return nn.ModuleDict({"twin": base})


def twins(models: nn.ModuleDict) -> dict[str, TwinModel]:
    """The ModuleDict's models, typed. A BLIP model trains through the same surface
    (``encode_image``, ``encode_text``, ``match_logit``, ``logit_scale``): JOINT on it is
    BLIP's own fine-tuning objective, ITC + ITM with negatives mined from its ITC."""
    found = {name: cast(TwinModel, model) for name, model in models.items()  # same surface
             if isinstance(model, TwinModel | BlipTwinModel)}
    if len(found) != len(models):
        raise TypeError("training holds only TwinModels")
    return found


def exported_model(mode: str, models: nn.ModuleDict) -> TwinModel:
    """The one model the rest of twinrank loads: SEP's pair is packaged as a SepTwinModel."""
    found = twins(models)
    if mode == "sep":
        return SepTwinModel.from_pair(found["bi"], found["cross"])
    return found["twin"]


def compute_losses(mode: str, models: nn.ModuleDict, pixels: torch.Tensor, ids: torch.Tensor,
                   image_ids: torch.Tensor, weights: LossWeights,
                   generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Named, weighted losses of one batch; the training loss is their sum.

    ``pixels`` (B, 3, H, W), token ``ids`` (B, L) and ``image_ids`` (B,) are aligned rows;
    ``image_ids`` may instead be the batch's (B, B) image x caption positives mask.
    """
    losses: dict[str, torch.Tensor] = {}
    found = twins(models)
    bi = found["bi"] if mode == "sep" else found["twin"]
    image, text = bi.encode_image(pixels), bi.encode_text(ids)
    if mode != "cross":
        losses[CONTRASTIVE] = weights.contrastive * contrastive_loss(
            image.image_vector, text.text_vector, bi.logit_scale, image_ids)
    if mode == "bi":
        return losses
    similarity = image.image_vector.detach() @ text.text_vector.detach().T  # (B, B)
    negatives = mine_hard_negatives(similarity, image_ids, generator,
                                    easy_share=weights.easy_negatives)
    cross = bi
    if mode == "sep":
        cross = found["cross"]
        image, text = cross.encode_image(pixels), cross.encode_text(ids)
    losses[MATCH] = weights.match * pair_match_loss(cross, image, text, negatives)
    if weights.rank > 0:
        ranked = mine_ranked_negatives(similarity, image_ids, weights.rank_negatives, generator)
        losses[RANK] = weights.rank * listwise_rank_loss(cross, image, text, ranked)
    return losses


def listwise_rank_loss(model: TwinModel, image: ImageEncoding, text: TextEncoding,
                       ranked: HardNegatives) -> torch.Tensor:
    """Rank loss of each caption over its image and K look-alike images, and of each image
    over its caption and K look-alike captions (``ranked`` holds (B, K) row indices)."""
    batch, count = ranked.image_for_text.shape
    rows = torch.arange(batch, device=image.image_tokens.device)
    own = rows[:, None]
    # text -> image: caption j against images [j, negatives...]; image -> text likewise
    text_rows = torch.cat([own.expand(batch, 1 + count).reshape(-1),
                           ranked.text_for_image.reshape(-1)])
    image_rows = torch.cat([torch.cat([own, ranked.image_for_text], 1).reshape(-1),
                            own.expand(batch, count).reshape(-1)])
    logits = model.match_logit(text.text_tokens[text_rows], text.text_mask[text_rows],
                               image.image_tokens[image_rows])
    to_image = logits[: batch * (1 + count)].view(batch, 1 + count)
    to_text = torch.cat([to_image[:, :1], logits[batch * (1 + count):].view(batch, count)], 1)
    return (rank_loss(to_image) + rank_loss(to_text)) / 2


def pair_match_loss(model: TwinModel, image: ImageEncoding, text: TextEncoding,
                    negatives: HardNegatives) -> torch.Tensor:
    """Match loss over B positives, B (image, wrong caption) and B (wrong image, caption)."""
    batch = image.image_tokens.shape[0]
    rows = torch.arange(batch, device=image.image_tokens.device)
    text_rows = torch.cat([rows, negatives.text_for_image, rows])  # (3B,)
    image_rows = torch.cat([rows, rows, negatives.image_for_text])  # (3B,)
    logits = model.match_logit(text.text_tokens[text_rows], text.text_mask[text_rows],
                               image.image_tokens[image_rows])  # (3B,)
    return match_loss(logits[:batch], logits[batch:])


def freeze_layers(model: TwinModel, count: int) -> int:
    """Freeze the embeddings and the first ``count`` blocks of both towers; returns how
    many parameters were frozen. Useful when fine-tuning a large pretrained model on little
    data; ``count=0`` trains everything."""
    if count <= 0:
        return 0
    if isinstance(model, BlipTwinModel):
        return _freeze(model.early_parameters(count))
    frozen: list[nn.Parameter] = []
    for tower in (model.clip.visual, model.clip.text):
        blocks = getattr(getattr(tower, "transformer", None), "resblocks", None)
        if blocks is None:
            raise ValueError("--freeze-layers needs open_clip transformer towers "
                             f"(found {type(tower).__name__}); use --freeze-layers 0")
        for name in ("conv1", "class_embedding", "positional_embedding", "ln_pre",
                     "token_embedding"):
            part = getattr(tower, name, None)
            if isinstance(part, nn.Module):
                frozen.extend(part.parameters())
            elif isinstance(part, nn.Parameter):
                frozen.append(part)
        for block in list(blocks)[:count]:
            frozen.extend(block.parameters())
    return _freeze(frozen)


def _freeze(parameters: list[nn.Parameter]) -> int:
    for parameter in parameters:
        parameter.requires_grad_(False)
    return sum(p.numel() for p in parameters)

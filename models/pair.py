"""SEP as one model: a bi-encoder and a separately trained cross-encoder behind one interface.

The paper's SEP baseline is two independent models. Packaged as a ``SepTwinModel`` they
drop into everything that takes a TwinModel: ``encode_image`` returns the bi-encoder's image
vector (for the ANN index) and the *cross-encoder's* image tokens (for the reranker cache),
``encode_text`` likewise, and ``match_logit`` is the cross-encoder's head. Ingest, search,
rerank and evaluation therefore run SEP unchanged, paying its real cost: two image towers
at ingest, two text towers per query, twice the parameters.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from twinrank.models.config import TwinConfig
from twinrank.models.twin import (
    ImageEncoding,
    TextEncoding,
    TwinModel,
    build_clip,
    pool_patch_tokens,
    text_forward,
)

SEP_LAYOUT = "sep"


class SepTwinModel(TwinModel):
    """``clip`` = the bi-encoder's towers; ``cross_clip`` + ``head`` = the cross-encoder.

    Example:
        >>> pair = SepTwinModel.from_pair(bi_model, cross_model)  # doctest: +SKIP
        >>> save_model(pair, "runs/sep")  # loads back as a SepTwinModel  # doctest: +SKIP
    """

    layout = SEP_LAYOUT

    def __init__(self, config: TwinConfig, clip: torch.nn.Module | None = None,
                 cross_clip: torch.nn.Module | None = None, model_id: str | None = None) -> None:
        super().__init__(config, clip, model_id)
        self.cross_clip: Any = cross_clip if cross_clip is not None else build_clip(config)

    def image_modules(self) -> list[torch.nn.Module]:
        """Both image towers run at ingest (vector from one, tokens from the other)."""
        return [self.clip.visual, self.cross_clip.visual, self.head]

    @classmethod
    def from_pair(cls, bi: TwinModel, cross: TwinModel) -> SepTwinModel:
        """Combine two trained TwinModels of one architecture (their weights are shared,
        not copied: train them apart, then package)."""
        if bi.config.clip_cfg != cross.config.clip_cfg or bi.config.fusion != cross.config.fusion:
            raise ValueError("SEP needs the bi-encoder and cross-encoder to have the same "
                             "architecture; build both from the same --model")
        pair = cls(bi.config, bi.clip, cross.clip, model_id=f"{bi.config.name}:sep")
        pair.head = cross.head
        return pair

    @property
    def cross_towers(self) -> torch.nn.Module:
        towers: torch.nn.Module = self.cross_clip
        return towers

    def encode_image(self, pixels: torch.Tensor) -> ImageEncoding:
        pooled, _ = self.clip.visual(pixels)  # (B, D)
        _, patch_tokens = self.cross_clip.visual(pixels)  # (B, N, vision_width)
        return ImageEncoding(
            image_vector=F.normalize(pooled, dim=-1),
            image_tokens=self.head.project_image(
                pool_patch_tokens(patch_tokens, self.config.token_grid)),
        )

    def encode_text(self, ids: torch.Tensor) -> TextEncoding:
        ids = ids.to(self.device)
        pooled, _ = text_forward(self.clip.text, ids)
        _, tokens = text_forward(self.cross_clip.text, ids)
        return TextEncoding(text_vector=F.normalize(pooled, dim=-1), text_tokens=tokens,
                            text_mask=ids != self.pad_id)

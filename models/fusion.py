"""The fusion head: the cross-encoder half of a TwinModel.

Text tokens attend to image tokens through a few transformer decoder layers (self-attention
over ``[CLS] + text``, cross-attention to the image); the ``[CLS]`` state becomes one match
logit per (text, image) pair. Image tokens enter through ``project_image``, whose output is
what ingest caches in the store, so reranking never touches pixels.
"""

from __future__ import annotations

import torch
from torch import nn

from twinrank.models.config import FusionConfig


def image_projection(vision_width: int, width: int) -> nn.Sequential:
    """Patch tokens (B, T, vision_width) -> the cached image tokens (B, T, width): the one
    part of the head that ingest runs (``FusionHead.project_image``)."""
    return nn.Sequential(nn.LayerNorm(vision_width), nn.Linear(vision_width, width))


class FusionHead(nn.Module):
    """Scores (text, image) pairs from token features.

    Example:
        >>> head = FusionHead(FusionConfig(width=32, layers=1, heads=2), 16, 24)
        >>> image_tokens = head.project_image(torch.randn(3, 4, 24))  # (3, 4, 32)
        >>> head(torch.randn(3, 5, 16), torch.ones(3, 5, dtype=torch.bool), image_tokens).shape
        torch.Size([3])
    """

    def __init__(self, config: FusionConfig, text_width: int, vision_width: int) -> None:
        super().__init__()
        self.config = config
        width = config.width
        self.image_in = image_projection(vision_width, width)
        self.text_in = nn.Sequential(nn.LayerNorm(text_width), nn.Linear(text_width, width))
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.layers = nn.ModuleList(
            nn.TransformerDecoderLayer(
                d_model=width,
                nhead=config.heads,
                dim_feedforward=int(width * config.mlp_ratio),
                dropout=0.0,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            for _ in range(config.layers)
        )
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, 1)
        nn.init.normal_(self.cls, std=0.02)
        # A from-scratch head sits on the match prior for thousands of steps before its
        # attention finds the text-image interaction; a bilinear term on pooled tokens gives
        # it that interaction at once, and the attention layers learn binding on top.
        self.pooled = nn.Linear(width, width, bias=False) if config.pooled_match else None
        if self.pooled is not None:
            nn.init.zeros_(self.pooled.weight)

    def project_image(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        """Patch tokens from the image tower (B, T, vision_width) -> cached tokens (B, T, W)."""
        projected: torch.Tensor = self.image_in(patch_tokens)
        return projected

    def forward(
        self, text_tokens: torch.Tensor, text_mask: torch.Tensor, image_tokens: torch.Tensor
    ) -> torch.Tensor:
        """Match logits (B,) for text tokens (B, L, text_width) and cached image tokens (B, T, W).

        ``text_mask`` is True where a text token is real, False on padding.
        """
        batch = text_tokens.shape[0]
        text_in = self.text_in(text_tokens)  # (B, L, W)
        x = torch.cat([self.cls.expand(batch, -1, -1), text_in], dim=1)
        keep = torch.cat([text_mask.new_ones(batch, 1), text_mask.bool()], dim=1)  # (B, 1 + L)
        memory = image_tokens.to(x.dtype)
        for layer in self.layers:
            x = layer(x, memory, tgt_key_padding_mask=~keep)
        logits: torch.Tensor = self.out(self.norm(x[:, 0])).squeeze(-1)
        if self.pooled is not None:
            logits = logits + self.pooled_logit(text_in, text_mask, memory)
        return logits

    def pooled_logit(self, text_in: torch.Tensor, text_mask: torch.Tensor,
                     memory: torch.Tensor) -> torch.Tensor:
        """The bilinear term (``pooled_match``) of projected text tokens (B or 1, L, W) and
        image tokens (B, T, W): the masked text mean against the image mean, (B,)."""
        assert self.pooled is not None
        weights = text_mask.to(text_in.dtype).unsqueeze(-1)  # (B, L, 1)
        text_mean = (text_in * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # (B, W)
        image_mean = memory.mean(dim=1)  # (B, W)
        pooled: torch.Tensor = (self.pooled(text_mean) * image_mean).sum(-1)
        return pooled

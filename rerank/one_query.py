"""The fusion head evaluated for ONE text against k images, skipping work that repeats.

``FusionHead.forward`` treats the k (text, image) pairs as k unrelated sequences. For one
query they are not: before any cross-attention, the text half of the first layer (input
projection + self-attention) is the same for all k, so it runs once; and only ``[CLS]``
is read out, so the last layer computes queries, cross-attention and MLP for ``[CLS]``
alone (keys and values still come from every token). Same weights, same logits (to float
rounding), about a third of the compute for the two-layer head. Heads of another shape
go through ``FusionHead.forward`` unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from twinrank.models.fusion import FusionHead


def supports_one_query(head: FusionHead) -> bool:
    """Whether ``head`` is the pre-norm decoder stack this shortcut reproduces exactly."""
    return all(
        isinstance(layer, nn.TransformerDecoderLayer) and layer.norm_first
        and not layer.training for layer in head.layers
    ) and len(head.layers) > 0


def one_query_logits(
    head: FusionHead, text_tokens: torch.Tensor, text_mask: torch.Tensor,
    image_tokens: torch.Tensor,
) -> torch.Tensor:
    """Match logits (k,) for one text (1, L, text_width) against k images (k, T, W)."""
    k = image_tokens.shape[0]
    text_in = head.text_in(text_tokens)  # (1, L, W)
    x = torch.cat([head.cls, text_in], dim=1)  # (1, 1 + L, W)
    pad = ~torch.cat([text_mask.new_ones(1, 1), text_mask.bool()], dim=1)  # (1, 1 + L)
    memory = image_tokens.to(x.dtype)
    layers: list[Any] = list(head.layers)  # nn.TransformerDecoderLayer, norm_first
    first = layers[0]
    x = x + _self_attention(first, first.norm1(x), first.norm1(x), pad)  # once, not k times
    x = x.expand(k, -1, -1)
    pad = pad.expand(k, -1)
    for index, layer in enumerate(layers):
        if index > 0:
            normed = layer.norm1(x)
            last = index == len(layers) - 1
            x = x[:, :1] if last else x  # the last layer only needs [CLS] as a query
            x = x + _self_attention(layer, normed[:, : x.shape[1]], normed, pad)
        x = x + _cross_attention(layer, layer.norm2(x), memory)
        x = x + layer._ff_block(layer.norm3(x))
    logits: torch.Tensor = head.out(head.norm(x[:, 0])).squeeze(-1)
    if head.pooled is not None:  # the head's bilinear term, the one text against k images
        logits = logits + head.pooled_logit(text_in, text_mask, memory)
    return logits


def _self_attention(
    layer: Any, query: torch.Tensor, keys: torch.Tensor, pad: torch.Tensor
) -> torch.Tensor:
    out: torch.Tensor = layer.self_attn(
        query, keys, keys, key_padding_mask=pad, need_weights=False
    )[0]
    return out


def _cross_attention(
    layer: Any, query: torch.Tensor, memory: torch.Tensor
) -> torch.Tensor:
    out: torch.Tensor = layer.multihead_attn(query, memory, memory, need_weights=False)[0]
    return out

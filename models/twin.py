"""TwinModel: one set of open_clip towers serving as bi-encoder and, with a fusion head,
as cross-encoder.

``encode_image`` gives the image vector for the ANN index *and* the image tokens the
reranker needs (already projected by the fusion head, ready to cache). ``encode_text``
gives the query vector and the text tokens. ``match_logit`` is the cross-encoder score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from twinrank.display import warn_query_cut
from twinrank.models.config import TwinConfig
from twinrank.models.evidence import Evidence
from twinrank.models.fusion import FusionHead


@dataclass
class ImageEncoding:
    image_vector: torch.Tensor  # (B, D), L2-normalised
    image_tokens: torch.Tensor  # (B, T, W), fusion-head input, cached in the store


@dataclass
class TextEncoding:
    text_vector: torch.Tensor  # (B, D), L2-normalised
    text_tokens: torch.Tensor  # (B, L, text_width)
    text_mask: torch.Tensor  # (B, L), True on real tokens


def build_clip(config: TwinConfig) -> nn.Module:
    """The open_clip model with a text tower that can return token states."""
    from open_clip.model import CustomTextCLIP

    cfg = {k: v for k, v in config.clip_cfg.items() if k not in ("custom_text", "hf_model_name")}
    clip = CustomTextCLIP(**cfg)
    clip.visual.output_tokens = True
    clip.text.output_tokens = True
    return clip


def build_tokenizer(config: TwinConfig) -> Any:
    from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

    hf_name = config.clip_cfg["text_cfg"].get("hf_tokenizer_name")
    if hf_name:
        return HFTokenizer(hf_name, context_length=config.context_length)
    return SimpleTokenizer(context_length=config.context_length)


def pad_token_id(tokenizer: Any) -> int:
    """The id a tokenizer pads with: 0 for open_clip's own, the HF tokenizer's otherwise
    (XLM-R pads with 1, and its id 0 is the ``<s>`` every text starts with)."""
    inner = getattr(tokenizer, "tokenizer", None)  # open_clip's HFTokenizer wraps an HF one
    pad = getattr(inner, "pad_token_id", None)
    return int(pad) if pad is not None else 0


class TwinModel(nn.Module):
    """Bi-encoder and cross-encoder over shared towers.

    Every model family (this one, SEP pairs, BLIP in ``models.blip``) offers the same
    surface, which is all that ingest, the store, search and rerank use: ``model_id``,
    ``image_size``, ``vector_size``, ``token_shape``, ``reranker_trained``, ``tokenize``,
    ``preprocess_images``, ``encode_image``, ``encode_text``, ``match_logit`` and
    ``image_modules`` (the ``models.encoder.Encoder`` protocol).

    Example:
        >>> from twinrank.models import create_model
        >>> model = create_model("twinrank-tiny")
        >>> text = model.encode_text(model.tokenize(["a red circle"]))
        >>> text.text_vector.shape
        torch.Size([1, 64])
    """

    family = "open_clip"

    def __init__(self, config: TwinConfig, clip: nn.Module | None = None,
                 model_id: str | None = None) -> None:
        super().__init__()
        self.config = config
        self.clip: Any = clip if clip is not None else build_clip(config)
        self._model_id = model_id or f"{config.name}:unknown"
        self._source: str = config.name  # a folder when loaded from one (the factory's)
        self.head = FusionHead(config.fusion, self.text_width, self.vision_width)
        self._tokenizer: Any = None  # built on first use (see ``tokenizer``)
        self._preprocess: Any = None
        # What held-out validation found of the reranker (its folder's validation.json,
        # read by the factory); None: never measured, so search does not trust it.
        self.reranker_evidence: Evidence | None = None

    @property
    def model_id(self) -> str:
        """The identity a collection records, so it is never searched with another model.

        Fixed when the model is built or loaded (``models.factory``); a changed copy (a new
        image size, a deeper head) is built with its own id.
        """
        return self._model_id

    @property
    def image_size(self) -> int:
        """The side of the square picture the image tower reads."""
        return self.config.image_size

    @property
    def vector_size(self) -> int:
        """Length of the image and text vectors the store indexes."""
        return self.config.embed_dim

    @property
    def token_shape(self) -> tuple[int, int]:
        """(tokens, width) of the image tokens cached per image for the reranker."""
        return (self.config.image_token_count, self.config.fusion.width)

    @property
    def reranker_trained(self) -> bool:
        """Whether ``match_logit`` was trained (a ``twinrank train`` match objective): a
        pretrained open_clip wrapped here has a random fusion head, never a reranker."""
        return self.config.reranker_trained

    @property
    def source(self) -> str:
        """How to load this model again: a name or a model folder (set by the factory)."""
        return self._source

    @property
    def pretrained(self) -> str | None:
        """The open_clip pretrained tag (or weights file) this model was built with."""
        return self.config.pretrained

    def image_modules(self) -> list[nn.Module]:
        """The modules ``encode_image`` runs: ingest casts a copy of them to bf16."""
        return [self.clip.visual, self.head]

    @property
    def towers(self) -> nn.Module:
        """The shared image + text towers (the open_clip model)."""
        towers: nn.Module = self.clip
        return towers

    @property
    def text_width(self) -> int:
        text = self.clip.text
        return int(getattr(text, "width", None) or text.config.hidden_size)

    @property
    def vision_width(self) -> int:
        return int(self.clip.visual.ln_post.normalized_shape[0])

    @property
    def logit_scale(self) -> torch.Tensor:
        scale: torch.Tensor = self.clip.logit_scale
        return scale

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def preprocess(self) -> Any:
        """The eval image transform (PIL image -> normalised tensor)."""
        if self._preprocess is None:
            from open_clip.transform import image_transform

            self._preprocess = image_transform(
                self.config.image_size,
                is_train=False,
                mean=self.config.image_mean,
                std=self.config.image_std,
            )
        return self._preprocess

    @property
    def tokenizer(self) -> Any:
        """The text tokenizer, built on first use: reading CLIP's BPE merges costs about a
        CPU-second, and ingest (the image side) never tokenizes."""
        if self._tokenizer is None:
            self._tokenizer = build_tokenizer(self.config)
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer

    @property
    def pad_id(self) -> int:
        """The token id of padding; ``text_mask`` is True everywhere else."""
        return pad_token_id(self.tokenizer)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids (B, L), cut to the longest text: the text tower is causal, so this is exact."""
        ids: torch.Tensor = self.tokenizer(list(texts))
        if len(ids) and bool((ids[:, -1] != self.pad_id).any()):  # a text filled the context
            warn_query_cut(int(ids.shape[1]))
        length = int((ids != self.pad_id).sum(dim=1).max().item()) if len(ids) else 1
        return ids[:, : max(length, 1)]

    def preprocess_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return torch.stack([self.preprocess(image) for image in images])

    def encode_image(self, pixels: torch.Tensor) -> ImageEncoding:
        """Image vectors and cacheable image tokens for a batch of pixels (B, 3, H, W)."""
        pooled, patch_tokens = self.clip.visual(pixels)  # (B, D), (B, N, vision_width)
        patch_tokens = pool_patch_tokens(patch_tokens, self.config.token_grid)
        return ImageEncoding(
            image_vector=F.normalize(pooled, dim=-1),
            image_tokens=self.head.project_image(patch_tokens),
        )

    def encode_text(self, ids: torch.Tensor) -> TextEncoding:
        """Text vectors and token states for token ids (B, L) from ``tokenize``."""
        ids = ids.to(self.device)
        pooled, tokens = self._text_forward(ids)
        return TextEncoding(
            text_vector=F.normalize(pooled, dim=-1),
            text_tokens=tokens,
            text_mask=ids != self.pad_id,
        )

    def match_logit(
        self, text_tokens: torch.Tensor, text_mask: torch.Tensor, image_tokens: torch.Tensor
    ) -> torch.Tensor:
        """Cross-encoder logits (B,) for aligned text and image token batches."""
        logits: torch.Tensor = self.head(text_tokens, text_mask, image_tokens)
        return logits

    def rerank_logit(
        self, text_tokens: torch.Tensor, text_mask: torch.Tensor, image_tokens: torch.Tensor
    ) -> torch.Tensor:
        """What a reranker ranks by: the match logit the head was trained on."""
        return self.match_logit(text_tokens, text_mask, image_tokens)

    @property
    def bi_weight(self) -> float:
        """The bi-encoder score's weight in a reranked score (``rerank + w * bi``): the one
        its validation split chose, else 0 (the reranker's order alone)."""
        return self.reranker_evidence.bi_weight if self.reranker_evidence else 0.0

    def _text_forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return text_forward(self.clip.text, ids)


def pool_patch_tokens(patch_tokens: torch.Tensor, grid: int) -> torch.Tensor:
    """Patch tokens (B, N, W) average-pooled to grid x grid (B, grid * grid, W) before they
    are cached (``TwinConfig.token_grid``); unchanged when grid is 0 or not smaller."""
    batch, count, width = patch_tokens.shape
    side = int(round(count**0.5))
    if not grid or grid >= side or side * side != count:
        return patch_tokens
    square = patch_tokens.transpose(1, 2).reshape(batch, width, side, side)
    pooled = F.adaptive_avg_pool2d(square, grid)  # (B, width, grid, grid)
    return pooled.flatten(2).transpose(1, 2)


def text_forward(text: Any, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled text features and token states (B, L, width) of an open_clip text tower."""
    plain_clip_text = (
        hasattr(text, "token_embedding")
        and getattr(text, "cls_emb", None) is None
        and not getattr(text, "use_pad_mask", False)
        and getattr(text, "pool_type", "argmax") == "argmax"
    )
    if not plain_clip_text:  # HF towers and CoCa-style towers take the full context
        pooled, tokens = text(ids)
        return pooled, tokens
    # open_clip's own forward uses the full-context causal mask; slice it to the input.
    length = ids.shape[1]
    cast_dtype = text.transformer.get_cast_dtype()
    x = text.token_embedding(ids).to(cast_dtype)
    x = x + text.positional_embedding[:length].to(cast_dtype)
    mask = text.attn_mask[:length, :length] if text.attn_mask is not None else None
    x = text.ln_final(text.transformer(x, attn_mask=mask))  # (B, L, width)
    pooled = x[torch.arange(x.shape[0], device=x.device), ids.argmax(dim=-1)]
    projection = text.text_projection
    if isinstance(projection, nn.Linear):
        pooled = projection(pooled)
    elif projection is not None:
        pooled = pooled @ projection
    return pooled, x

"""The surface every model family offers: all that ingest, the store, search and rerank use.

A ``TwinModel`` (open_clip towers + fusion head), a SEP pair and BLIP
(``models.blip.BlipTwinModel``) each implement it; code above ``models`` takes an
``Encoder`` and never asks which family it got.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from PIL import Image
from torch import nn

from twinrank.models.twin import ImageEncoding, TextEncoding


@runtime_checkable
class ImageEncoder(Protocol):
    """The image half of an ``Encoder``: all that ingest's embedder runs. Every ``Encoder``
    is one; so is ``models.image_side.ImageSide``, a model folder's image tower loaded
    without open_clip."""

    family: str

    @property
    def model_id(self) -> str: ...  # what a collection records; fixed at build
    @property
    def device(self) -> torch.device: ...
    @property
    def image_size(self) -> int: ...
    @property
    def vector_size(self) -> int: ...
    @property
    def token_shape(self) -> tuple[int, int]: ...  # cached tokens per image (count, width)
    @property
    def source(self) -> str: ...  # how to load it again
    @property
    def pretrained(self) -> str | None: ...
    @property
    def preprocess(self) -> Any: ...  # PIL image -> (3, H, W) tensor

    def preprocess_images(self, images: Sequence[Image.Image]) -> torch.Tensor: ...
    def encode_image(self, pixels: torch.Tensor) -> ImageEncoding: ...
    def image_modules(self) -> list[nn.Module]: ...


@runtime_checkable
class Encoder(ImageEncoder, Protocol):
    """A bi-encoder whose image tokens a cross-encoder (``match_logit``) can score.

    >>> from twinrank.models import create_model
    >>> isinstance(create_model("twinrank-tiny"), Encoder)
    True
    """

    @property
    def reranker_trained(self) -> bool: ...  # whether match_logit was trained
    @property
    def bi_weight(self) -> float: ...  # the bi-encoder score's weight in a reranked score

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor: ...
    def encode_text(self, ids: torch.Tensor) -> TextEncoding: ...
    def match_logit(self, text_tokens: torch.Tensor, text_mask: torch.Tensor,
                    image_tokens: torch.Tensor) -> torch.Tensor: ...  # the trained logit
    def rerank_logit(self, text_tokens: torch.Tensor, text_mask: torch.Tensor,
                     image_tokens: torch.Tensor) -> torch.Tensor: ...  # what reranks

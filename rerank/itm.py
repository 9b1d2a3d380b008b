"""An off-the-shelf cross-encoder: BLIP image-text matching from transformers.

``BlipForImageTextRetrieval`` with its ITM head reads every (text, image) pair in full:
the image tower runs on each candidate at query time. It is here as a strong baseline and
as a reranker for collections whose own model has no trained fusion head. Two savings
over calling the model's ``forward`` pair by pair: pairs run in batches, and when one
image is scored against many captions the image is encoded once and its embeddings reused
(same scores, about 1/5 of the time at BLIP-base size).

Example:
    >>> reranker = BlipItmReranker.from_pretrained(DEFAULT_BLIP_ITM)  # doctest: +SKIP
    >>> reranker.score_images("a dog", [open_rgb("a.jpg"), open_rgb("b.jpg")])  # doctest: +SKIP
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from twinrank.models.blip import DEFAULT_BLIP, enc_token_id, load_blip_itm, with_enc_token
from twinrank.models.device import autocast, inference_dtype, pick_device
from twinrank.rerank.base import (
    Candidate,
    RerankerContext,
    RerankerKind,
    RerankQuery,
    as_query,
    open_rgb,
)

DEFAULT_BLIP_ITM = DEFAULT_BLIP


class BlipItmReranker:
    """Scores pairs with BLIP's image-text matching head as BLIP's authors do: ``[ENC]``
    first, the match logit (logit[1]).

    ``model`` is a ``BlipForImageTextRetrieval``, ``processor`` a ``BlipProcessor``.
    """

    name = "blip-itm"

    def __init__(
        self,
        model: Any,
        processor: Any,
        device: str | torch.device | None = None,
        precision: str = "auto",
        batch_size: int = 16,
        source: str = "",
    ) -> None:
        self.device = pick_device(str(device) if device is not None else None)
        self.model = model.to(self.device).eval()
        self.processor = processor
        self.dtype = inference_dtype(self.device, precision)
        self.batch_size = batch_size
        self.source = source
        self.enc_token_id = enc_token_id(processor.tokenizer,
                                         int(model.config.text_config.vocab_size))

    @classmethod
    def from_pretrained(
        cls, source: str = DEFAULT_BLIP_ITM, device: str | torch.device | None = None,
        precision: str = "auto", batch_size: int = 16,
    ) -> BlipItmReranker:
        """Load by Hugging Face id or from a folder written by ``save_pretrained``."""
        model, processor = load_blip_itm(source)
        return cls(model, processor, device, precision, batch_size, source)

    def score(self, query: str | RerankQuery, candidates: Sequence[Candidate]) -> np.ndarray:
        """Scores for the candidates, reading each image file (in batches, never all at once)."""
        text = as_query(query).text
        chunks = [
            self.score_images(text, [open_rgb(c.path) for c in candidates[i : i + self.batch_size]])
            for i in range(0, len(candidates), self.batch_size)
        ]
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)

    @torch.inference_mode()
    def score_images(self, query: str, images: Sequence[Image.Image]) -> np.ndarray:
        """Scores for one text query against k images: every image runs the image tower."""
        if not images:
            return np.zeros(0, dtype=np.float32)
        ids, mask = self._tokenize([query])  # (1, L)
        scores = []
        for start in range(0, len(images), self.batch_size):
            image_embeds = self.encode_images(images[start : start + self.batch_size])
            n = image_embeds.shape[0]
            scores.append(self._match(ids.expand(n, -1), mask.expand(n, -1), image_embeds))
        return np.concatenate(scores)

    @torch.inference_mode()
    def score_captions(self, image: Image.Image, captions: Sequence[str]) -> np.ndarray:
        """Scores for n captions of one image: the image is encoded once and reused."""
        if not captions:
            return np.zeros(0, dtype=np.float32)
        image_embeds = self.encode_images([image])  # (1, P, hidden)
        scores = []
        for start in range(0, len(captions), self.batch_size):
            ids, mask = self._tokenize(captions[start : start + self.batch_size])
            n = ids.shape[0]
            scores.append(self._match(ids, mask, image_embeds.expand(n, -1, -1)))
        return np.concatenate(scores)

    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The vision tower's patch states (n, P, hidden) for a batch of images."""
        pixels = self.processor.image_processor(list(images), return_tensors="pt")["pixel_values"]
        with autocast(self.device, self.dtype):
            states: torch.Tensor = self.model.vision_model(
                pixel_values=pixels.to(self.device)
            ).last_hidden_state
        return states

    def _tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        encoded = self.processor.tokenizer(
            list(texts), padding=True, truncation=True, max_length=64, return_tensors="pt"
        )
        return encoded["input_ids"].to(self.device), encoded["attention_mask"].to(self.device)

    def _match(
        self, ids: torch.Tensor, mask: torch.Tensor, image_embeds: torch.Tensor
    ) -> np.ndarray:
        image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=self.device)
        with autocast(self.device, self.dtype):
            states = self.model.text_encoder(
                input_ids=with_enc_token(ids, self.enc_token_id),
                attention_mask=mask,
                encoder_hidden_states=image_embeds,
                encoder_attention_mask=image_mask,
            ).last_hidden_state
            logits = self.model.itm_head(states[:, 0, :]).float()  # (n, 2): no match, match
        result: np.ndarray = logits[:, 1].cpu().numpy()
        return result


_loaded: dict[tuple[str, str, str], BlipItmReranker] = {}
_lock = threading.Lock()


def _build(argument: str, context: RerankerContext) -> BlipItmReranker:
    """Loaded once per process per (source, device, precision): an app that asks for it on
    every query never reloads the weights."""
    key = (argument, str(pick_device(context.device)), context.precision)
    with _lock:
        if key not in _loaded:
            _loaded[key] = BlipItmReranker.from_pretrained(argument, key[1], context.precision)
        return _loaded[key]


def clear_loaded() -> None:
    """Forget loaded BLIP rerankers (tests; or to free memory after switching)."""
    with _lock:
        _loaded.clear()


KIND = RerankerKind(
    "blip-itm",
    "BLIP image-text matching (transformers) by Hugging Face id or local folder, for any "
    "collection: re-reads every candidate image",
    f"blip-itm:{DEFAULT_BLIP_ITM}", _build, default_argument=DEFAULT_BLIP_ITM,
    reads_images=True)

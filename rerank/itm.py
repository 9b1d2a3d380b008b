"""An off-the-shelf cross-encoder: BLIP image-text matching from transformers.

``BlipForImageTextRetrieval`` with its ITM head reads every (text, image) pair in full:
the image tower runs on each candidate at query time. It is here as a strong baseline and
as a reranker for collections whose own model has no trained fusion head. Two savings
over calling the model's ``forward`` pair by pair: pairs run in batches, and when one
image is scored against many captions the image is encoded once and its embeddings reused
(same scores, about 1/5 of the time at BLIP-base size).

Example:
    >>> reranker = BlipItmReranker.from_pretrained("Salesforce/blip-itm-base-coco")
    >>> reranker.score_images("a dog on a beach", [open_rgb("a.jpg"), open_rgb("b.jpg")])
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from twinrank.models import ModelLoadError
from twinrank.models.device import autocast, inference_dtype, pick_device
from twinrank.models.factory import hub_reachable
from twinrank.rerank.base import open_rgb
from twinrank.search.hits import Hit

DEFAULT_BLIP_ITM = "Salesforce/blip-itm-base-coco"


class BlipItmReranker:
    """Scores pairs with BLIP's image-text matching head: log-odds that they match.

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

    @classmethod
    def from_pretrained(
        cls, source: str = DEFAULT_BLIP_ITM, device: str | torch.device | None = None,
        precision: str = "auto", batch_size: int = 16,
    ) -> BlipItmReranker:
        """Load by Hugging Face id or from a folder written by ``save_pretrained``."""
        model, processor = load_blip_itm(source)
        return cls(model, processor, device, precision, batch_size, source)

    def score(self, query: str, hits: Sequence[Hit]) -> np.ndarray:
        """Scores for hits, reading each image file (in batches, never all at once)."""
        chunks = [
            self.score_images(query, [open_rgb(h.path) for h in hits[i : i + self.batch_size]])
            for i in range(0, len(hits), self.batch_size)
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
                input_ids=ids,
                attention_mask=mask,
                encoder_hidden_states=image_embeds,
                encoder_attention_mask=image_mask,
            ).last_hidden_state
            logits = self.model.itm_head(states[:, 0, :]).float()  # (n, 2): no match, match
        result: np.ndarray = (logits[:, 1] - logits[:, 0]).cpu().numpy()
        return result


def load_blip_itm(source: str) -> tuple[Any, Any]:
    """Model and processor from a Hugging Face id or a local folder; one clear error if not.

    Offline, ``from_pretrained`` would retry the hub for ~25 s and then fail; this checks
    first and fails at once unless the model is already in the local hub cache.
    """
    from transformers import BlipForImageTextRetrieval, BlipProcessor

    folder = Path(source).expanduser()
    local_only = False
    if folder.is_dir():
        source = str(folder)
    elif source.startswith(("/", ".", "~")) or source.count("/") != 1:
        raise ModelLoadError(
            f"BLIP reranker {source!r} is neither a model folder nor a Hugging Face id; pass "
            f"an existing folder or an id like {DEFAULT_BLIP_ITM!r}."
        )
    elif not hub_reachable():
        if not _in_hub_cache(source):
            raise ModelLoadError(
                f"Cannot download the BLIP reranker {source!r}: the Hugging Face hub is "
                f"unreachable and it is not in the local cache; download it on a connected "
                f"machine and pass its folder as --reranker blip-itm:/path/to/folder."
            )
        local_only = True
    try:
        with _quiet_progress():
            model = BlipForImageTextRetrieval.from_pretrained(source, local_files_only=local_only)
            processor = BlipProcessor.from_pretrained(source, local_files_only=local_only)
    except Exception as error:  # transformers raises many kinds; all mean "could not load"
        raise ModelLoadError(
            f"Could not load the BLIP reranker {source!r} ({type(error).__name__}: {error}); "
            f"pass a BLIP ITM checkpoint such as {DEFAULT_BLIP_ITM!r} or its folder."
        ) from error
    return model.eval(), processor


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """No "Loading weights" progress bar in the CLI's output."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)

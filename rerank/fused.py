"""The fused-head reranker: the TwinModel's cross-encoder over tokens cached at ingest.

At query time only the query's text tokens are computed, once; the fusion head then scores
all k candidates in one batch against their cached image tokens. No image is opened —
except for points stored without tokens (an older collection), whose tokens are
recomputed from the file, with one warning per process.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from models import TwinModel
from models.device import autocast, inference_dtype
from search.hits import Hit
from search.store import VectorStore

log = logging.getLogger(__name__)


class FusedReranker:
    """Scores (query, image) pairs with the model's fusion head.

    Example:
        >>> reranker = FusedReranker(model, store)
        >>> reranker.score("a red circle left of a blue square", hits)  # (k,) logits
    """

    name = "fused"

    def __init__(self, model: TwinModel, store: VectorStore | None, precision: str = "auto"):
        self.model = model
        self.store = store
        self.dtype = inference_dtype(model.device, precision)
        self._warned_fallback = False

    @torch.inference_mode()
    def score(self, query: str, hits: Sequence[Hit]) -> np.ndarray:
        if not hits:
            return np.zeros(0, dtype=np.float32)
        image_tokens = self.image_tokens(hits)  # (k, T, W)
        return self.score_tokens(query, image_tokens)

    @torch.inference_mode()
    def score_tokens(self, query: str, image_tokens: torch.Tensor) -> np.ndarray:
        """Scores for one query against k cached token sets (k, T, W) in one batch."""
        device = self.model.device
        with autocast(device, self.dtype):
            text = self.model.encode_text(self.model.tokenize([query]))
            k = image_tokens.shape[0]
            logits = self.model.match_logit(
                text.text_tokens.expand(k, -1, -1),
                text.text_mask.expand(k, -1),
                image_tokens.to(device),
            )
        return logits.float().cpu().numpy()

    def image_tokens(self, hits: Sequence[Hit]) -> torch.Tensor:
        cached = self.store.get_tokens([h.id for h in hits]) if self.store is not None else {}
        missing = [h for h in hits if h.id not in cached]
        if missing:
            if not self._warned_fallback:
                log.warning(
                    "%d hit(s) have no cached reranker tokens (an older collection?); "
                    "recomputing them from the image files. Re-ingest to make reranking faster.",
                    len(missing),
                )
                self._warned_fallback = True
            cached.update(self.tokens_from_files(missing))
        return torch.from_numpy(np.stack([cached[h.id] for h in hits]).astype(np.float32))

    def tokens_from_files(self, hits: Sequence[Hit]) -> dict[str, np.ndarray]:
        """Recompute image tokens from the files (the slow path a cache avoids)."""
        images = [_open_rgb(Path(h.path)) for h in hits]
        pixels = self.model.preprocess_images(images).to(self.model.device)
        with torch.inference_mode(), autocast(self.model.device, self.dtype):
            tokens = self.model.encode_image(pixels).image_tokens
        as_stored = tokens.to(torch.float16).float().cpu().numpy()  # same rounding as the cache
        return {h.id: t for h, t in zip(hits, as_stored, strict=True)}


def _open_rgb(path: Path) -> Image.Image:
    with Image.open(path) as opened:
        return ImageOps.exif_transpose(opened).convert("RGB")

"""The fused-head reranker: the TwinModel's cross-encoder over tokens cached at ingest.

At query time only the query's text tokens are computed, once; the fusion head then scores
all k candidates in one batch against their cached image tokens. No image is opened —
except for points stored without tokens (an older collection), whose tokens are
recomputed from the file, with one warning per reranker.

The other direction works the same way: an image query is encoded once (or its cached
tokens are passed in) and the head scores all candidate captions in one batch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from twinrank.models import TextEncoding, TwinModel
from twinrank.models.device import autocast, inference_dtype
from twinrank.rerank.base import open_rgb
from twinrank.rerank.one_query import one_query_logits, supports_one_query
from twinrank.search.hits import Hit
from twinrank.store import VectorStore

log = logging.getLogger(__name__)

ImageQuery = Image.Image | np.ndarray | torch.Tensor


class FusedReranker:
    """Scores (query, image) pairs with the model's fusion head.

    It runs on the model's device (CUDA with fp16/bf16 autocast when the model is there).

    Example:
        >>> reranker = FusedReranker(model, store)
        >>> reranker.score("a red circle left of a blue square", hits)  # (k,) logits
        >>> reranker.score_captions(image, ["a red circle", "a blue circle"])  # (2,)
    """

    name = "fused"

    def __init__(
        self,
        model: TwinModel,
        store: VectorStore | None,
        precision: str = "auto",
        batch_size: int = 64,
    ):
        self.model = model
        self.store = store
        self.dtype = inference_dtype(model.device, precision)
        self.batch_size = batch_size
        self._warned_fallback = False

    @torch.inference_mode()
    def score(self, query: str, hits: Sequence[Hit]) -> np.ndarray:
        if not hits:
            return np.zeros(0, dtype=np.float32)
        image_tokens = self.image_tokens(hits)  # (k, T, W)
        return self.score_tokens(query, image_tokens)

    @torch.inference_mode()
    def score_encoded(self, text: TextEncoding, hits: Sequence[Hit]) -> np.ndarray:
        """``score`` for a query already encoded by this reranker's model (one row).

        A search client that shares the model encodes the query once, for the vector
        search and for this, instead of running the text tower twice.
        """
        if not hits:
            return np.zeros(0, dtype=np.float32)
        return self.score_tokens(text, self.image_tokens(hits))

    @torch.inference_mode()
    def score_tokens(self, query: str | TextEncoding, image_tokens: torch.Tensor) -> np.ndarray:
        """Scores for one query (text, or its encoding) against k cached token sets
        (k, T, W) in one batch."""
        device = self.model.device
        with autocast(device, self.dtype):
            text = (query if isinstance(query, TextEncoding)
                    else self.model.encode_text(self.model.tokenize([query])))
            image_tokens = image_tokens.to(device, non_blocking=True)
            if supports_one_query(self.model.head):  # same logits, a third of the work
                logits = one_query_logits(
                    self.model.head, text.text_tokens, text.text_mask, image_tokens
                )
            else:
                k = image_tokens.shape[0]
                logits = self.model.match_logit(
                    text.text_tokens.expand(k, -1, -1), text.text_mask.expand(k, -1), image_tokens
                )
        return logits.float().cpu().numpy()

    @torch.inference_mode()
    def score_images(self, query: str, images: Sequence[Image.Image]) -> np.ndarray:
        """Scores for images that are not in a store: tokens computed here, then the head."""
        if not images:
            return np.zeros(0, dtype=np.float32)
        return self.score_tokens(query, self.encode_tokens(images))

    @torch.inference_mode()
    def score_captions(self, image: ImageQuery, captions: Sequence[str]) -> np.ndarray:
        """Scores for n captions of one image query, in one batch.

        ``image`` is a PIL image (encoded once here) or its cached tokens (T, W), e.g. from
        ``store.get_tokens``. Example:
            >>> reranker.score_captions(tokens, ["a red circle", "a blue square"])
        """
        if not captions:
            return np.zeros(0, dtype=np.float32)
        if isinstance(image, Image.Image):
            tokens = self.encode_tokens([image])[0]
        else:
            tokens = torch.as_tensor(np.asarray(image, dtype=np.float32))
        if tokens.ndim != 2:
            raise ValueError(f"Image tokens must be (tokens, width), got {tuple(tokens.shape)}.")
        device = self.model.device
        with autocast(device, self.dtype):
            text = self.model.encode_text(self.model.tokenize(list(captions)))  # (n, L, width)
            n = text.text_tokens.shape[0]
            logits = self.model.match_logit(
                text.text_tokens, text.text_mask, tokens.to(device).expand(n, -1, -1)
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
        tokens = self.encode_tokens([open_rgb(h.path) for h in hits]).numpy()
        return {h.id: t for h, t in zip(hits, tokens, strict=True)}

    @torch.inference_mode()
    def encode_tokens(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Image tokens (n, T, W) on the CPU, rounded through fp16 as the store keeps them."""
        device = self.model.device
        chunks = []
        for start in range(0, len(images), self.batch_size):
            pixels = self.model.preprocess_images(images[start : start + self.batch_size])
            with autocast(device, self.dtype):
                tokens = self.model.encode_image(pixels.to(device)).image_tokens
            chunks.append(tokens.to(torch.float16).float().cpu())
        return torch.cat(chunks)

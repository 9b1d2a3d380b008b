"""The collection model's own cross-encoder over image tokens cached at ingest.

At query time only the query's text side is computed, once (or taken from the search
client, which already encoded the text for the vector search); the cross-encoder then
scores all k candidates in one batch against their cached image tokens. No image is
opened — except for points stored without tokens (a collection ingested with
``--no-cache-tokens``, or an older one), whose tokens are recomputed from the files, with
one warning per reranker.

It works for every model family through ``rerank_logit``: a TwinModel's fusion head
(with the one-query shortcut of ``rerank.one_query``), a SEP pair's cross-encoder, BLIP's
ITM head. The other direction works the same way: an image query is encoded once (or its
cached tokens are passed in) and the cross-encoder scores all candidate captions in one
batch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from twinrank.models import TextEncoding
from twinrank.models.device import autocast, inference_dtype
from twinrank.models.encode import decode_size
from twinrank.models.encoder import Encoder
from twinrank.models.images import open_image
from twinrank.rerank.base import (
    Candidate,
    RerankerContext,
    RerankerKind,
    RerankQuery,
    TokenSource,
    UntrainedRerankerError,
    as_query,
    untrained_allowed,
)
from twinrank.rerank.one_query import one_query_logits, supports_one_query

log = logging.getLogger(__name__)

ImageQuery = Image.Image | np.ndarray | torch.Tensor


class FusedReranker:
    """Scores (query, image) pairs with the model's cross-encoder over cached tokens.

    It runs on the model's device (CUDA with fp16/bf16 autocast when the model is there).
    A model whose cross-encoder was never trained (``model.reranker_trained`` False) is
    refused unless ``allow_untrained`` (default: the ``TWINRANK_ALLOW_UNTRAINED_RERANKER``
    switch) says the caller knows its scores are noise.

    Example:
        >>> reranker = FusedReranker(model, store, allow_untrained=True)
        >>> reranker.score("a red circle", [Candidate(hit_id, "a.png")]).shape  # doctest: +SKIP
        (1,)
    """

    name = "fused"

    def __init__(
        self,
        model: Encoder,
        tokens: TokenSource | None,
        precision: str = "auto",
        batch_size: int = 64,
        allow_untrained: bool | None = None,
    ):
        if allow_untrained is None:  # TWINRANK_ALLOW_UNTRAINED_RERANKER, for tests only
            allow_untrained = untrained_allowed()
        if not model.reranker_trained and not allow_untrained:
            raise UntrainedRerankerError(untrained_message(model))
        self.model = model
        self.tokens = tokens
        self.dtype = inference_dtype(model.device, precision)
        self.batch_size = batch_size
        self._warned_fallback = False

    @torch.inference_mode()
    def score(self, query: str | RerankQuery, candidates: Sequence[Candidate]) -> np.ndarray:
        if not candidates:
            return np.zeros(0, dtype=np.float32)
        query = as_query(query)
        text = query.encoding_for(self.model.model_id) or query.text
        return self.score_tokens(text, self.image_tokens(candidates))

    @torch.inference_mode()
    def score_tokens(self, query: str | TextEncoding, image_tokens: torch.Tensor) -> np.ndarray:
        """Scores for one query (text, or its encoding) against k token sets (k, T, W)."""
        device = self.model.device
        with autocast(device, self.dtype):
            text = (query if isinstance(query, TextEncoding)
                    else self.model.encode_text(self.model.tokenize([query])))
            image_tokens = image_tokens.to(device, non_blocking=True)
            head = getattr(self.model, "head", None)
            if head is not None and supports_one_query(head):  # same logits, a third of the work
                logits = one_query_logits(head, text.text_tokens, text.text_mask, image_tokens)
            else:
                k = image_tokens.shape[0]
                tokens, mask = text.text_tokens, text.text_mask
                logits = self.model.rerank_logit(
                    tokens.expand(k, *tokens.shape[1:]), mask.expand(k, -1), image_tokens)
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
        ``store.get_tokens``.
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
            text = self.model.encode_text(self.model.tokenize(list(captions)))
            n = text.text_tokens.shape[0]
            logits = self.model.rerank_logit(
                text.text_tokens, text.text_mask, tokens.to(device).expand(n, -1, -1)
            )
        return logits.float().cpu().numpy()

    def image_tokens(self, candidates: Sequence[Candidate]) -> torch.Tensor:
        """Cached tokens (k, T, W) of the candidates; missing ones recomputed from files."""
        ids = [c.id for c in candidates]
        cached = self.tokens.get_tokens(ids) if self.tokens is not None else {}
        missing = [c for c in candidates if c.id not in cached]
        if missing:
            info = getattr(self.tokens, "info", None)  # a store; --no-cache-tokens: on purpose
            if not self._warned_fallback and getattr(info, "token_count", 1) != 0:
                log.warning(
                    "%d candidate(s) have no cached reranker tokens (ingested with "
                    "--no-cache-tokens, or an older collection); reading their image files.",
                    len(missing),
                )
                self._warned_fallback = True
            cached.update(self.tokens_from_files(missing))
        return torch.from_numpy(np.stack([cached[i] for i in ids]).astype(np.float32))

    def tokens_from_files(self, candidates: Sequence[Candidate]) -> dict[str, np.ndarray]:
        """Recompute image tokens from the files (the slow path a cache avoids), decoded
        as ingest decodes them, so the scores equal the cached ones."""
        size = decode_size(self.model)
        tokens = self.encode_tokens([open_image(c.path, target_size=size)
                                     for c in candidates]).numpy()
        return {c.id: t for c, t in zip(candidates, tokens, strict=True)}

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


def untrained_message(model: Encoder) -> str:
    """Why a model's own cross-encoder is not used, and what to do instead."""
    return (f"The model {model.model_id!r} has no trained reranker (its cross-encoder was "
            f"never trained), so reranking with it would reorder results at random. Use "
            f"--reranker blip-itm, pick a preset with a reranker (twinrank models), or "
            f"train one with twinrank train --mode joint.")


def _build(argument: str, context: RerankerContext) -> FusedReranker:
    if context.model is None:
        raise ValueError("The 'fused' reranker needs the collection's model; pass --store "
                         "(or --model), or choose --reranker blip-itm.")
    return FusedReranker(context.model, context.tokens, precision=context.precision,
                         allow_untrained=context.allow_untrained)


KIND = RerankerKind(
    "fused",
    "the collection model's own cross-encoder over image tokens cached at ingest (a "
    "trained TwinModel's fusion head, BLIP's ITM head): no image is read at query time",
    "fused", _build, needs_model=True)

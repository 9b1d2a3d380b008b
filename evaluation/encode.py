"""Encode an evaluation corpus once: image vectors + cached tokens, caption vectors + tokens.

Every mode the harness compares (bi-encoder, cross-encoder over all pairs, retrieve-and-
rerank) reads from the same ``EncodedCorpus``, so differences between modes come from how
many pairs each one scores, never from encoding twice. Image tokens are produced by
ingest's own ``ImageEmbedder`` and kept in float16, exactly as a store caches them.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from twinrank.captions.data import CaptionedImage, flatten_captions
from twinrank.models import TwinModel
from twinrank.models.device import autocast, inference_dtype
from twinrank.models.encode import ImageEmbedder
from twinrank.models.images import ImageReadError, open_image


@dataclass(frozen=True)
class EncodedCorpus:
    """A test split as the harness sees it: one row per image, one row per caption."""

    image_vectors: np.ndarray  # (N, D) float32, L2-normalised
    image_tokens: np.ndarray  # (N, T, W) float16, as cached at ingest
    text_vectors: np.ndarray  # (M, D) float32, L2-normalised
    text_tokens: np.ndarray  # (M, L, text_width) float32, zero-padded to the longest caption
    text_mask: np.ndarray  # (M, L) bool, True on real tokens
    text_to_image: np.ndarray  # (M,) int64, the image each caption describes
    captions: tuple[str, ...]
    # (P, 2) int64 (caption, image) pairs: other images a caption is just as true of
    also_true: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))
    image_paths: tuple[str, ...] = ()  # for rerankers that read the pixels themselves

    @property
    def n_images(self) -> int:
        return int(self.image_vectors.shape[0])

    @property
    def n_texts(self) -> int:
        return int(self.text_vectors.shape[0])

    def bi_scores(self) -> np.ndarray:
        """Cosine similarities (M, N): every caption against every image."""
        scores: np.ndarray = self.text_vectors @ self.image_vectors.T
        return scores

    def select_images(self, image_ids: Sequence[int] | np.ndarray) -> EncodedCorpus:
        """The corpus restricted to ``image_ids`` and their captions (an MSCOCO 1k fold).

        >>> fold = corpus.select_images(range(1000, 2000))  # doctest: +SKIP
        """
        image_ids = np.asarray(image_ids, dtype=np.int64)
        new_index = np.full(self.n_images, -1, dtype=np.int64)
        new_index[image_ids] = np.arange(image_ids.size)
        rows = np.flatnonzero(new_index[self.text_to_image] >= 0)
        new_text = np.full(self.n_texts, -1, dtype=np.int64)
        new_text[rows] = np.arange(rows.size)
        pairs = np.stack([new_text[self.also_true[:, 0]], new_index[self.also_true[:, 1]]], 1)
        return EncodedCorpus(
            image_vectors=self.image_vectors[image_ids],
            image_tokens=self.image_tokens[image_ids],
            text_vectors=self.text_vectors[rows],
            text_tokens=self.text_tokens[rows],
            text_mask=self.text_mask[rows],
            text_to_image=new_index[self.text_to_image[rows]],
            captions=tuple(self.captions[int(i)] for i in rows),
            also_true=pairs[(pairs >= 0).all(axis=1)].reshape(-1, 2),
            image_paths=tuple(self.image_paths[int(i)] for i in image_ids)
            if self.image_paths else (),
        )


def limit_captions(
    records: Sequence[CaptionedImage], max_captions: int | None
) -> list[CaptionedImage]:
    """Keep at most ``max_captions`` per image (MSCOCO has a few images with 6 or 7)."""
    if max_captions is None:
        return list(records)
    if max_captions < 1:
        raise ValueError(f"max_captions must be at least 1, got {max_captions}")
    return [replace(r, captions=r.captions[:max_captions]) for r in records]


def _open_image(path: Path, target_size: int | None) -> Image.Image:
    if not path.is_file():
        raise FileNotFoundError(
            f"evaluation image not found: {path}; check the dataset's image root"
        )
    try:
        return open_image(path, target_size=target_size)
    except ImageReadError as error:
        raise ValueError(f"cannot evaluate on {path} ({error.reason}); remove it from the "
                         f"split") from None


def encode_images(
    model: TwinModel, paths: Sequence[Path], batch_size: int = 64, precision: str = "auto",
    workers: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """Image vectors (N, D) float32 and cached tokens (N, T, W) float16, ingest's way."""
    embedder = ImageEmbedder(model, precision)
    vectors: list[np.ndarray] = []
    tokens: list[np.ndarray] = []
    size = embedder.target_size  # as ingest decodes them (models.encode.decode_size)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for start in range(0, len(paths), batch_size):
            batch = list(pool.map(lambda p: _open_image(Path(p), size),
                                  paths[start : start + batch_size]))
            batch_vectors, batch_tokens = embedder.embed(batch)
            vectors.append(batch_vectors)
            tokens.append(batch_tokens)
    return np.concatenate(vectors), np.concatenate(tokens)


@torch.inference_mode()
def encode_texts(
    model: TwinModel, texts: Sequence[str], batch_size: int = 256, precision: str = "auto"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Caption vectors (M, D), text tokens (M, L, ...) and masks (M, L), zero-padded.

    The tokens are what the model's ``match_logit`` reads: token states (M, L, width) for
    an open_clip fusion head, token ids (M, L) for BLIP (its ITM re-reads the text)."""
    dtype = inference_dtype(model.device, precision)
    vectors: list[np.ndarray] = []
    token_batches: list[np.ndarray] = []
    mask_batches: list[np.ndarray] = []
    for start in range(0, len(texts), batch_size):
        with autocast(model.device, dtype):
            encoded = model.encode_text(model.tokenize(list(texts[start : start + batch_size])))
        vectors.append(encoded.text_vector.float().cpu().numpy())
        states = encoded.text_tokens
        token_batches.append((states.float() if states.is_floating_point() else states)
                             .cpu().numpy())
        mask_batches.append(encoded.text_mask.cpu().numpy())
    length = max(batch.shape[1] for batch in token_batches)
    first = token_batches[0]
    tokens = np.zeros((len(texts), length, *first.shape[2:]), dtype=first.dtype)
    mask = np.zeros((len(texts), length), dtype=bool)
    row = 0
    for batch_tokens, batch_mask in zip(token_batches, mask_batches, strict=True):
        tokens[row : row + len(batch_tokens), : batch_tokens.shape[1]] = batch_tokens
        mask[row : row + len(batch_mask), : batch_mask.shape[1]] = batch_mask
        row += len(batch_tokens)
    return np.concatenate(vectors), tokens, mask


def encode_corpus(
    model: TwinModel, records: Sequence[CaptionedImage], batch_size: int = 64,
    precision: str = "auto",
) -> EncodedCorpus:
    """Encode every image and every caption of ``records`` once.

    >>> corpus = encode_corpus(model, load_dataset("scenes:data/scenes:test"))  # doctest: +SKIP
    >>> corpus.bi_scores().shape  # doctest: +SKIP
    (1500, 500)
    """
    if not records:
        raise ValueError("the evaluation split holds no images")
    captions, owners = flatten_captions(records)
    if not captions:
        raise ValueError("the evaluation split holds no captions; text queries need them")
    image_vectors, image_tokens = encode_images(
        model, [r.image_path for r in records], batch_size, precision)
    text_vectors, text_tokens, text_mask = encode_texts(
        model, captions, max(batch_size, 256), precision)
    return EncodedCorpus(
        image_vectors=image_vectors,
        image_tokens=image_tokens,
        text_vectors=text_vectors,
        text_tokens=text_tokens,
        text_mask=text_mask,
        text_to_image=np.asarray(owners, dtype=np.int64),
        captions=tuple(captions),
        also_true=also_true_pairs(records, np.asarray(owners, dtype=np.int64)),
        image_paths=tuple(str(r.image_path) for r in records),
    )


def also_true_pairs(records: Sequence[CaptionedImage], text_to_image: np.ndarray) -> np.ndarray:
    """(P, 2) (caption, image) pairs from each record's ``also_true`` image ids; ids not in
    ``records`` (another split, a smaller sample) are skipped.

    >>> records = [CaptionedImage(Path("a.png"), ("x", "y"), image_id="a", also_true=("b",)),
    ...            CaptionedImage(Path("b.png"), ("z",), image_id="b")]
    >>> also_true_pairs(records, np.array([0, 0, 1])).tolist()
    [[0, 1], [1, 1]]
    """
    index = {record.image_id: i for i, record in enumerate(records)}
    texts_of: dict[int, list[int]] = {}
    for text, image in enumerate(text_to_image.tolist()):
        texts_of.setdefault(image, []).append(text)
    pairs = [(text, index[other])
             for image, record in enumerate(records) if record.also_true
             for text in texts_of.get(image, [])
             for other in record.also_true if other in index and index[other] != image]
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


__all__ = ["EncodedCorpus", "encode_corpus", "encode_images", "encode_texts", "limit_captions"]

"""SearchClient: the Python client people script against.

It opens a collection (embedded folder or Qdrant server URL), loads the model the
collection was built with (or checks the one you pass), and runs query -> vector -> kNN ->
(optional) rerank, timing each stage. Queries are text, image files or PIL images.

Example:
    >>> with SearchClient("~/.twinrank/photos") as client:  # built by `twinrank ingest`
    ...     for hit in client.search("a dog on a beach", k=3):
    ...         print(hit.rerank_rank, hit.bi_rank, hit.path)
    1 ... /.../photos/...
    2 ... /.../photos/...
    3 ... /.../photos/...
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from PIL import Image

from twinrank.models import TextEncoding, TwinModel, create_model, model_id
from twinrank.models.device import autocast, inference_dtype
from twinrank.models.images import ImageReadError, open_image
from twinrank.rerank.base import Reranker, RerankQuery
from twinrank.rerank.policy import FUSED, blend_weight, default_reranker, forced_note
from twinrank.rerank.registry import make_reranker
from twinrank.search.hits import Hit, SearchResults
from twinrank.search.route import (
    QueryError,
    RerankStep,
    check_k,
    clean_query,
    ms_since,
    run_query,
)
from twinrank.store import (
    CollectionInfo,
    CollectionMismatchError,
    VectorStore,
    open_store,
    point_id_for,
)
from twinrank.store.filters import SearchFilter
from twinrank.store.schema import file_content_hash

DEFAULT_RERANK_TOP_K = 20


def load_collection_model(info: CollectionInfo, device: str | None = None) -> TwinModel:
    """The model a collection was built with, loaded from the source it recorded."""
    model = create_model(info.model_source, pretrained=info.model_pretrained, device=device)
    if model_id(model) != info.model_id:
        raise CollectionMismatchError(
            f"The collection was built with model {info.model_id!r} but {info.model_source!r} "
            f"now loads as {model_id(model)!r} (the weights changed?). Put the original "
            f"model back at {info.model_source!r}, or re-ingest into a new --store."
        )
    return model


Query = str | Path | Image.Image  # text, an image file, or an image


class SearchClient:
    """Search one collection by text or by image, with optional reranking.

    ``store`` is a store location (a folder for the embedded engine, an ``http(s)://`` URL
    for a Qdrant server; see ``open_store``) or an open store; ``model`` defaults to the
    one the collection records. ``reranker`` is a registry spec ("fused", "blip-itm:ID",
    "none"), a ``Reranker``, None (off), or "auto" (the default): the collection model's
    own cross-encoder when it was trained, else none, with ``reranker_note`` saying why.
    Safe to share between threads.

    Example:
        >>> from datetime import date
        >>> with SearchClient("~/.twinrank/store") as client:
        ...     hits = client.search("a red circle left of a blue square", k=5)
        ...     same_look = client.similar(hits[0].id, k=5)
        ...     by_photo = client.search(Path("photos/2021/a0.png"), k=5)
        ...     in_2021 = client.search("a beach", filters=SearchFilter(
        ...         after=date(2021, 1, 1), before=date(2022, 1, 1), formats=("jpeg",)))
        >>> len(hits), len(same_look), len(by_photo), len(in_2021)  # none here is from 2021
        (5, 5, 5, 0)
    """

    def __init__(
        self,
        store: str | Path | VectorStore,
        model: TwinModel | None = None,
        reranker: Reranker | str | None = "auto",
        device: str | None = None,
        rerank_top_k: int = DEFAULT_RERANK_TOP_K,
        bi_weight: float | None = None,
        collection: str | None = None,
        api_key: str | None = None,
    ) -> None:
        if isinstance(store, str | Path):
            self.store = open_store(store, collection=collection, api_key=api_key)
        else:
            self.store = store
        if model is None:
            model = load_collection_model(self.store.info, device)
        elif model_id(model) != self.store.info.model_id:
            raise CollectionMismatchError(
                f"This collection was built with model {self.store.info.model_id!r}, "
                f"not {model_id(model)!r}. Use the model it was built with."
            )
        self.model = model
        self.reranker_note: str | None = None
        self.reranker = self._make_reranker(reranker)
        self.rerank_top_k = rerank_top_k
        # rerank + w * bi; None: the reranker's own recipe (BLIP's ITM + ITC: 1)
        self.bi_weight = blend_weight(self.reranker, model) if bi_weight is None else bi_weight
        self._dtype = inference_dtype(model.device)

    def _make_reranker(self, reranker: Reranker | str | None) -> Reranker | None:
        if reranker is None or not isinstance(reranker, str):
            return reranker
        if reranker == "auto":
            reranker, self.reranker_note = default_reranker(self.model)
        elif reranker.strip().lower() == FUSED:
            self.reranker_note = forced_note(self.model)
        return make_reranker(reranker, self.model, self.store, device=str(self.model.device))

    @torch.inference_mode()
    def encode_query(self, text: str) -> np.ndarray:
        """The normalised query vector (D,) for ``text``."""
        return self.encode_texts([text])[0]

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Normalised text vectors (B, D), one forward pass for the batch."""
        vectors: np.ndarray = self._encode_text_batch(texts).text_vector.float().cpu().numpy()
        return vectors

    @torch.inference_mode()
    def _encode_text_batch(self, texts: Sequence[str]) -> TextEncoding:
        with autocast(self.model.device, self._dtype):
            return self.model.encode_text(self.model.tokenize(list(texts)))

    @torch.inference_mode()
    def encode_images(self, images: Sequence[Image.Image | Path]) -> np.ndarray:
        """Normalised image vectors (B, D) for PIL images or image files."""
        pixels = self.model.preprocess_images([_as_rgb(i) for i in images])
        with autocast(self.model.device, self._dtype):
            encoded = self.model.encode_image(pixels.to(self.model.device))
        vectors: np.ndarray = encoded.image_vector.float().cpu().numpy()
        return vectors

    def search(
        self,
        query: Query,
        k: int = 10,
        rerank: bool = True,
        filters: SearchFilter | None = None,
        rerank_top_k: int | None = None,
    ) -> SearchResults:
        """The best ``k`` images for a text (``str``) or an image (a ``Path`` or PIL image).

        Text: bi-encoder top-k, then reranked; the reranker sees ``max(k, rerank_top_k)``
        candidates and the best ``k`` are kept. Images are never reranked: the fusion head
        scores *text* against image tokens, while image-to-image cosine has no modality
        gap and is already the right similarity, so image hits keep ``rerank_rank=None``.
        A ``str`` is always text; pass ``Path("x.jpg")`` to search by an image file.
        """
        return self.search_batch([query], k, rerank, filters, rerank_top_k)[0]

    def search_batch(
        self,
        queries: Sequence[Query],
        k: int = 10,
        rerank: bool = True,
        filters: SearchFilter | None = None,
        rerank_top_k: int | None = None,
    ) -> list[SearchResults]:
        """``search`` for many queries; texts (and images) are encoded in one batch each.

        Example:
            >>> batch = client.search_batch(["a red circle", "a blue square"], k=3)
            >>> [len(results) for results in batch]
            [3, 3]
        """
        check_k(k)
        started = time.perf_counter()
        vectors, texts, encodings = self._encode_queries(queries)
        encode_ms = ms_since(started) / max(len(queries), 1)
        return [
            self._retrieve(vector, text, k, rerank, filters, rerank_top_k, {"encode_ms": encode_ms},
                           encoding)
            for vector, text, encoding in zip(vectors, texts, encodings, strict=True)
        ]

    def similar(
        self, point: str | Path, k: int = 10, filters: SearchFilter | None = None
    ) -> SearchResults:
        """Images that look like one in the collection (a point id) or any image file.

        The image itself is left out of its own results.

        Example:
            >>> hits[0].id in [h.id for h in client.similar(hits[0].id, k=5)]
            False
            >>> len(client.similar(Path("photos/2021/a0.png"), k=5))  # any image file
            5
        """
        check_k(k)
        started = time.perf_counter()
        point_id = self._point_for(point)
        if point_id is not None:
            vector = self.store.get_vectors([point_id])[point_id]
        else:
            vector = self.encode_images([Path(point)])[0]
        timings = {"encode_ms": ms_since(started)}
        results = self._retrieve(vector, None, k + 1, False, filters, None, timings)
        own = str(Path(point).expanduser().resolve()) if point_id is None else None
        kept = [h for h in results if h.id != point_id and own not in h.payload.get("paths", [])]
        return SearchResults(_renumber(kept[:k]), results.timings)

    def _point_for(self, point: str | Path) -> str | None:
        """The stored point an id or a file (by content) refers to; None when not stored."""
        if isinstance(point, str) and _is_uuid(point):
            if self.store.get_payloads([point]):
                return point
            raise QueryError(f"No image with id {point} in this collection.")
        path = Path(point).expanduser()
        if not path.is_file():
            raise QueryError(f"No such image file: {path}. Pass a point id or an image file.")
        point_id = point_id_for(file_content_hash(path))
        return point_id if self.store.get_payloads([point_id]) else None

    def _encode_queries(
        self, queries: Sequence[Query]
    ) -> tuple[list[np.ndarray], list[str | None], list[TextEncoding | None]]:
        """Query vectors, the texts (None for image queries) and each text's encoding (one
        row), which a reranker on the same model reuses, so no text is encoded twice."""
        texts: list[str | None] = [
            clean_query(q) if isinstance(q, str) else None for q in queries
        ]
        vectors: list[np.ndarray | None] = [None] * len(queries)
        encodings: list[TextEncoding | None] = [None] * len(queries)
        text_at = [i for i, t in enumerate(texts) if t is not None]
        image_at = [i for i, t in enumerate(texts) if t is None]
        if text_at:
            encoded = self._encode_text_batch([texts[i] or "" for i in text_at])
            text_vectors = encoded.text_vector.float().cpu().numpy()
            for row, i in enumerate(text_at):
                vectors[i] = text_vectors[row]
                encodings[i] = _encoding_row(encoded, row)
        if image_at:
            images = [cast(Image.Image | Path, queries[i]) for i in image_at]
            for i, v in zip(image_at, self.encode_images(images), strict=True):
                vectors[i] = v
        return [v for v in vectors if v is not None], texts, encodings

    def _retrieve(
        self,
        vector: np.ndarray,
        text: str | None,
        k: int,
        rerank: bool,
        filters: SearchFilter | None,
        rerank_top_k: int | None,
        timings: dict[str, float],
        encoding: TextEncoding | None = None,
    ) -> SearchResults:
        step = None
        if rerank and text is not None and self.reranker is not None:
            step = RerankStep(self.reranker, RerankQuery(text, encoding, self.model.model_id),
                              rerank_top_k or self.rerank_top_k, self.bi_weight)
        return run_query(self.store, vector, k, filters=filters, rerank=step, timings=timings,
                         modality="image" if text is None else "text")

    def compare(
        self, text: str, k: int = 10, filters: SearchFilter | None = None
    ) -> tuple[list[Hit], SearchResults]:
        """The top ``k`` before reranking (bi-encoder order) and after, from one search.

        Both lists carry both stages' ranks, so a view can say how far each image moved.
        """
        check_k(k)
        depth = max(k, self.rerank_top_k)
        results = self.search(text, k=depth, rerank=True, filters=filters, rerank_top_k=depth)
        before = sorted(results, key=lambda h: h.bi_rank)[:k]
        after = SearchResults(list(results[:k]), results.timings)
        return before, after

    def stats(self) -> dict[str, Any]:
        """What the collection holds and how it is stored.

        Example:
            >>> client.stats()["token_bytes_per_image"]
            8192
        """
        info = self.store.info
        return {
            "images": self.store.count(),
            "model_id": info.model_id,
            "vector_size": info.vector_size,
            "token_shape": [info.token_count, info.token_width],
            "token_dtype": info.token_dtype,
            "token_bytes_per_image": info.bytes_per_image(),
            "schema_version": info.schema_version,
            "backend": type(self.store).__name__,
            "reranker": getattr(self.reranker, "name", None),
            "reranker_note": self.reranker_note,
        }

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> SearchClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _as_rgb(image: Image.Image | Path) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    path = Path(image).expanduser()
    if not path.exists() and not path.is_symlink():
        raise QueryError(f"No such image file: {path}.")
    try:
        return open_image(path)  # the one reader: limits, no hang on a FIFO
    except ImageReadError as error:
        raise QueryError(str(error)) from None


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return len(text) == 36


def _renumber(hits: list[Hit]) -> list[Hit]:
    return [replace(h, bi_rank=rank) for rank, h in enumerate(hits, start=1)]


def _encoding_row(encoded: TextEncoding, row: int) -> TextEncoding:
    """One query's slice of a batch encoding, its padding trimmed to its own length."""
    length = int(encoded.text_mask[row].sum())
    return TextEncoding(encoded.text_vector[row:row + 1],
                        encoded.text_tokens[row:row + 1, :length],
                        encoded.text_mask[row:row + 1, :length])

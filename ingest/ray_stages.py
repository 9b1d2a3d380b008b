"""The Ray engine's stages: a read task, an embedding actor, and the writer's unpacker.

Each wraps a stage of the in-process runner (``runner._loader`` under ``pool.ReadAheadPool``,
``ImageEmbedder``) so both engines read, decode and embed alike; ``ray_engine`` wires them
into a Ray Data pipeline.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np

from twinrank.ingest.plan import Candidate
from twinrank.ingest.pool import ReadAheadPool
from twinrank.ingest.runner import _loader, _reason
from twinrank.models.encode import ImageEmbedder, ImagePreparer
from twinrank.store import CollectionMismatchError


@dataclass(frozen=True)
class ModelSpec:
    """How an actor builds the collection's model (weights are never shipped)."""

    source: str
    pretrained: str | None
    model_id: str
    vector_size: int
    token_shape: tuple[int, int]
    device: str | None = None
    precision: str = "auto"


class KnownIds:
    """Membership of point ids by their first 8 bytes: a sorted uint64 array.

    Example:
        >>> known = KnownIds(known_prefixes(["9f86d081-884c-7d65-9a2f-eaa0c55ad015"]))
        >>> "9f86d081-884c-7d65-9a2f-eaa0c55ad015" in known
        True
    """

    def __init__(self, prefixes: np.ndarray) -> None:
        self.prefixes = prefixes

    def __contains__(self, point_id: object) -> bool:
        key = np.uint64(uuid.UUID(str(point_id)).int >> 64)
        at = int(np.searchsorted(self.prefixes, key))
        return at < len(self.prefixes) and self.prefixes[at] == key


def known_prefixes(point_ids: Iterator[str] | Sequence[str] | set[str]) -> np.ndarray:
    """The sorted first 8 bytes of each point id (8 bytes a point, shared by every task)."""
    keys = [uuid.UUID(point_id).int >> 64 for point_id in point_ids]
    return np.sort(np.array(keys, dtype=np.uint64))


@dataclass(frozen=True)
class ReadStage:
    """What a read task needs: the model's PIL preprocessing and the decode limits."""

    preparer: ImagePreparer
    pixel_shape: tuple[int, ...]
    pixel_dtype: str
    max_pixels: int
    max_file_bytes: int
    timeout: float
    nice: int
    threads: int


def read_batch(batch: dict[str, np.ndarray], stage: ReadStage, known: Any) -> dict[str, Any]:
    """A Ray task: the runner's read stage over a batch of candidates."""
    import ray

    prefixes = ray.get(known) if isinstance(known, ray.ObjectRef) else known
    index = SimpleNamespace(point_ids=KnownIds(prefixes))
    load = _loader(cast(Any, stage.preparer), cast(Any, index), stage.max_pixels,
                   stage.max_file_bytes)
    candidates = [Candidate(Path(str(p)), int(s), int(m), None)
                  for p, s, m in zip(batch["path"], batch["size"], batch["mtime_ns"], strict=True)]
    n = len(candidates)
    out: dict[str, Any] = {
        "seq": np.asarray(batch["seq"]), "content_hash": np.full(n, "", dtype=object),
        "size": np.zeros(n, np.int64), "error": np.full(n, "", dtype=object),
        "width": np.zeros(n, np.int64), "height": np.zeros(n, np.int64),
        "format": np.full(n, "", dtype=object), "captured_at": np.full(n, "", dtype=object),
        "embed": np.zeros(n, bool),
        "pixels": np.zeros((n, *stage.pixel_shape), dtype=stage.pixel_dtype),
    }
    began, cpu = time.perf_counter(), time.process_time()
    with ReadAheadPool(load, stage.threads, stage.timeout, nice=stage.nice) as pool:
        for i, (_, result) in enumerate(pool.map(candidates, read_ahead=n)):
            if isinstance(result, BaseException):
                out["error"][i] = _reason(result)
                continue
            out["content_hash"][i] = result.facts.content_hash
            out["size"][i] = result.facts.size
            if result.image is not None and result.pixels is not None:
                out["width"][i], out["height"][i] = result.image.width, result.image.height
                out["format"][i] = result.image.format
                out["captured_at"][i] = result.image.captured_at or ""
                out["embed"][i] = True
                out["pixels"][i] = result.pixels
    out["read_s"] = np.full(n, (time.perf_counter() - began) / max(1, n))
    out["read_cpu_s"] = np.full(n, (time.process_time() - cpu) / max(1, n))
    out["read_pid"] = np.full(n, os.getpid(), np.int64)
    return out


class EmbedActor:
    """A Ray actor: one copy of the collection's model, embedding batches of pixels.

    Subclass it to change what an actor does (the fault-injection test does); pass the
    class to ``run_ray_ingest(embed_actor=...)``.
    """

    def __init__(self, spec: ModelSpec, threads: int | None = None) -> None:
        began = time.perf_counter()
        import torch

        from twinrank.models import create_model

        if threads:
            torch.set_num_threads(threads)
        model = create_model(spec.source, pretrained=spec.pretrained, device=spec.device)
        if model.model_id != spec.model_id:
            raise CollectionMismatchError(
                f"A Ray worker loaded {spec.source!r} as {model.model_id!r}, not the "
                f"collection's {spec.model_id!r}: install the same model (or twinrank) on "
                f"every node.")
        self.embedder = ImageEmbedder(model, spec.precision)
        self.spec = spec
        self.pid = os.getpid()
        self.start_s = time.perf_counter() - began  # imports and model load, reported once

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        began, cpu = time.perf_counter(), time.process_time()
        wanted = np.asarray(batch["embed"], dtype=bool)
        n = len(wanted)
        out = {name: column for name, column in batch.items() if name != "pixels"}
        vectors = np.zeros((n, self.spec.vector_size), np.float32)
        tokens = np.zeros((n, *self.spec.token_shape), np.float16)
        if wanted.any():
            pixels = list(np.asarray(batch["pixels"])[wanted])
            vectors[wanted], tokens[wanted] = self.embedder.embed_arrays(pixels)
        out["vector"] = vectors
        out["tokens"] = tokens
        out["actor_pid"] = np.full(n, self.pid, np.int64)
        out["precision"] = np.full(n, str(self.embedder.dtype).removeprefix("torch."),
                                   dtype=object)
        out["embed_s"] = np.full(n, (time.perf_counter() - began) / max(1, n))
        out["embed_cpu_s"] = np.full(n, (time.process_time() - cpu) / max(1, n))
        out["actor_start_s"] = np.zeros(n)
        if n:  # counted once per actor: on its first batch
            out["actor_start_s"][0], self.start_s = self.start_s, 0.0
        return out


class PrecomputedEmbedder:
    """The writer's embedder when actors did the work: unpacks their vectors and tokens.

    The writer batches "pixels" and calls ``embed_arrays``; here an item is either an
    actor's result packed into one float32 row (vector, then tokens) or, for the rare file
    the writer decodes itself, real pixels, embedded by ``fallback`` on the driver.
    """

    def __init__(self, fallback: ImageEmbedder, vector_size: int,
                 token_shape: tuple[int, int]) -> None:
        self.fallback = fallback
        self.vector_size = vector_size
        self.token_shape = token_shape
        self.target_size = fallback.target_size
        self.dtype = fallback.dtype

    def pack(self, vector: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        return np.concatenate([vector.astype(np.float32), tokens.astype(np.float32).ravel()])

    def prepare(self, image: Any) -> np.ndarray:
        return self.fallback.prepare(image)

    def embed_arrays(self, arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        packed = [a.ndim == 1 for a in arrays]
        vectors = np.zeros((len(arrays), self.vector_size), np.float32)
        tokens = np.zeros((len(arrays), *self.token_shape), np.float16)
        for i, array in enumerate(arrays):
            if packed[i]:
                vectors[i] = array[: self.vector_size]
                tokens[i] = array[self.vector_size:].reshape(self.token_shape)
        late = [i for i, is_packed in enumerate(packed) if not is_packed]
        if late:
            late_vectors, late_tokens = self.fallback.embed_arrays([arrays[i] for i in late])
            vectors[late], tokens[late] = late_vectors, late_tokens
        return vectors, tokens

"""What every store back end shares: the collection's identity, records, errors, the seam.

One collection per (corpus, model). Named vectors per point: ``image`` (dense, cosine,
HNSW) and ``tokens`` (the reranker's cached image tokens: a float16 multivector with no
index). Payload indexes on the fields users filter by (``search.filters.INDEXED_FIELDS``).
Both back ends (``search.edge`` embedded, ``search.remote`` by URL) build exactly this
schema and answer the same queries with the same points.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Protocol, Self

import numpy as np

from twinrank.store.filters import SearchFilter

SCHEMA_VERSION = 1

# Search policy shared by both back ends (measured in bench/store_bench.py). Text queries
# sit far from image vectors (the modality gap) and HNSW loses recall on them: at 100k
# clustered points, recall@20 for far queries was 0.65/0.77/0.86/0.93/0.97 at hnsw_ef
# 64/128/256/512/1024, against 1.0 for near queries from ef 128. So: exact search for
# small collections; HNSW for near queries; and a query whose best hit is a poor match
# (a far query) is searched again exactly, up to a size where exact search is too slow.
EXACT_SEARCH_BELOW = 20_000  # points; exact search here costs ~1-2 ms and recall is 1.0
HNSW_EF_MIN = 128  # beam width for the HNSW search above that size...
HNSW_EF_PER_RESULT = 8  # ...and at least this many candidates per requested result
FAR_QUERY_COSINE = 0.5  # best hit below this: the query is out of distribution
EXACT_RETRY_BELOW = 1_000_000  # points; a far query is re-run exactly below this size
FAR_QUERY_EF = 1024  # and with this beam above it


class StoreError(RuntimeError):
    """A store problem a user can act on; the message says what to do."""


class CollectionMismatchError(StoreError):
    """The collection was built with another model."""


class StoreBusyError(StoreError):
    """Another process holds the embedded store open."""


@dataclass(frozen=True)
class CollectionInfo:
    """What a collection was built with."""

    model_id: str
    vector_size: int
    token_count: int
    token_width: int
    token_dtype: str = "float16"
    schema_version: int = SCHEMA_VERSION
    model_source: str = ""  # how to load the model: a name, a folder, or a file
    model_pretrained: str | None = None  # open_clip pretrained tag, when the source is a name

    def bytes_per_image(self) -> int:
        """Bytes of cached reranker tokens per image (16 x 256 fp16 = 8 kB for ViT-B-32)."""
        return self.token_count * self.token_width * np.dtype(self.token_dtype).itemsize

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CollectionInfo:
        """Read a stored identity, ignoring keys a newer twinrank may have added."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class PointRecord:
    """One image as stored: its vector, its cached tokens and its payload."""

    id: str
    image_vector: np.ndarray  # (D,) float32, L2-normalised
    image_tokens: np.ndarray | None  # (T, W), stored as float16
    payload: dict[str, Any]


@dataclass(frozen=True)
class StoredHit:
    id: str
    score: float
    payload: dict[str, Any]


class VectorStore(Protocol):
    """What search, rerank, ingest and the UI need from a store."""

    info: CollectionInfo

    def upsert(self, records: Sequence[PointRecord]) -> None: ...
    def set_payload(self, point_id: str, payload: dict[str, Any]) -> None: ...
    def delete(self, ids: Sequence[str]) -> None: ...
    def search(
        self, vector: np.ndarray, limit: int, search_filter: SearchFilter | None = None
    ) -> list[StoredHit]: ...
    def get_tokens(self, ids: Sequence[str]) -> dict[str, np.ndarray]: ...
    def get_vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]: ...
    def get_payloads(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]: ...
    def iter_payloads(self) -> Iterator[tuple[str, dict[str, Any]]]: ...
    def count(self) -> int: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class StoreBase:
    """What both back ends share on top of their own calls: reading the two named vectors
    (``image``, ``tokens``) and use as a context manager that closes the store."""

    def get_tokens(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        return self._named_vectors(ids, "tokens")

    def get_vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        return self._named_vectors(ids, "image")

    def _named_vectors(self, ids: Sequence[str], name: str) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class SearchPlan:
    """How one kNN query runs: exactly, or HNSW with beam width ``hnsw_ef``."""

    exact: bool
    hnsw_ef: int | None


def search_plan(points: int, limit: int) -> SearchPlan:
    """The shared policy: exact below ``EXACT_SEARCH_BELOW`` points, a wide beam above.

    Example:
        >>> search_plan(5_000, 20)
        SearchPlan(exact=True, hnsw_ef=None)
    """
    if points < EXACT_SEARCH_BELOW:
        return SearchPlan(exact=True, hnsw_ef=None)
    return SearchPlan(exact=False, hnsw_ef=max(HNSW_EF_MIN, HNSW_EF_PER_RESULT * limit))


def far_query_plan(points: int) -> SearchPlan:
    """How a far (out-of-distribution) query is searched again."""
    return SearchPlan(exact=points < EXACT_RETRY_BELOW, hnsw_ef=FAR_QUERY_EF)


def planned_search(
    run: Callable[[SearchPlan], list[StoredHit]],
    points: int,
    limit: int,
    plan: SearchPlan | None = None,
) -> list[StoredHit]:
    """Run a kNN query under the shared policy; an explicit ``plan`` is run as given.

    A far query (best cosine under ``FAR_QUERY_COSINE`` after HNSW) is run again with
    ``far_query_plan``: near queries pay HNSW's price, text queries get exact recall.
    """
    if plan is not None:
        return run(plan)
    first = search_plan(points, limit)
    hits = run(first)
    if not first.exact and (not hits or hits[0].score < FAR_QUERY_COSINE):
        return run(far_query_plan(points))
    return hits


def point_id_for(content_hash: str) -> str:
    """Point ids come from file content: the same bytes under two names are one point."""
    return str(uuid.UUID(hex=content_hash[:32]))


def file_content_hash(path: Path) -> str:
    """sha256 of a file's bytes, read in blocks: the hash ``point_id_for`` takes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_info(found: CollectionInfo, wanted: CollectionInfo | None, where: str) -> None:
    """Refuse to open a collection with a model (or schema) other than its own."""
    if wanted is None:
        return
    if found.model_id != wanted.model_id:
        raise CollectionMismatchError(
            f"The collection at {where} was built with model {found.model_id!r}, not "
            f"{wanted.model_id!r}. Search it with --model set to the model it was built "
            f"with, or ingest into a new --store."
        )
    if found.schema_version != wanted.schema_version:
        raise CollectionMismatchError(
            f"The collection at {where} has schema version {found.schema_version}; this "
            f"twinrank writes version {wanted.schema_version}. Re-ingest into a new --store."
        )

"""The vector store: one Qdrant collection per (corpus, model).

``VectorStore`` is the seam every layer above talks to. ``EdgeStore`` is the default back
end: Qdrant Edge running in-process on a folder (segments, HNSW, payload indexes,
multivectors; no server). The collection's identity (model id, vector size, token
format, schema version) is written beside the data in ``twinrank.json`` and checked on
every open, so a collection is never searched with the wrong model.

Named vectors per point: ``image`` (dense, cosine, HNSW) and ``tokens`` (the reranker's
cached image tokens: a float16 multivector with no index).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from search.filters import INDEXED_FIELDS, SearchFilter

SCHEMA_VERSION = 1
META_FILE = "twinrank.json"
SHARD_DIR = "shard"
EXACT_SEARCH_BELOW = 20_000  # points; under this, exact search is fast and recall is 1.0


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
        """Bytes of cached reranker tokens per image."""
        return self.token_count * self.token_width * np.dtype(self.token_dtype).itemsize


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


def point_id_for(content_hash: str) -> str:
    """Point ids come from file content: the same bytes under two names are one point."""
    return str(uuid.UUID(hex=content_hash[:32]))


def read_info(folder: Path) -> CollectionInfo | None:
    meta = folder / META_FILE
    if not meta.is_file():
        return None
    return CollectionInfo(**json.loads(meta.read_text()))


def check_info(found: CollectionInfo, wanted: CollectionInfo | None, where: str) -> None:
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


class EdgeStore:
    """Qdrant Edge in-process on a folder: the default, embedded back end.

    Example:
        >>> store = EdgeStore.open("photos.twinrank", info)  # creates it if missing
        >>> store.search(query_vector, limit=20)
    """

    def __init__(self, folder: Path, shard: Any, info: CollectionInfo) -> None:
        self.folder = folder
        self.info = info
        self._shard = shard

    @classmethod
    def open(cls, folder: str | Path, info: CollectionInfo | None = None) -> EdgeStore:
        """Open the collection at ``folder``; create it when ``info`` is given and it is new."""
        from qdrant_edge import EdgeShard

        folder = Path(folder).expanduser()
        found = read_info(folder)
        if found is None:
            if info is None:
                raise StoreError(
                    f"No twinrank collection at {folder}. Create one with "
                    f"`twinrank ingest IMAGES --store {folder}`."
                )
            folder.mkdir(parents=True, exist_ok=True)
            shard = _guard_busy(folder, lambda: EdgeShard.create(str(folder / SHARD_DIR),
                                                                 _edge_config(info)))
            store = cls(folder, shard, info)
            store._create_indexes()
            (folder / META_FILE).write_text(json.dumps(asdict(info), indent=2))
            return store
        check_info(found, info, str(folder))
        shard = _guard_busy(folder, lambda: EdgeShard.load(str(folder / SHARD_DIR)))
        return cls(folder, shard, found)

    def upsert(self, records: Sequence[PointRecord]) -> None:
        from qdrant_edge import Point, UpdateOperation

        if not records:
            return
        points = []
        for record in records:
            vectors: dict[str, Any] = {"image": record.image_vector.astype(np.float32).tolist()}
            if record.image_tokens is not None:
                vectors["tokens"] = record.image_tokens.astype(np.float32).tolist()
            points.append(Point(record.id, vectors, record.payload))
        self._shard.update(UpdateOperation.upsert_points(points))

    def set_payload(self, point_id: str, payload: dict[str, Any]) -> None:
        from qdrant_edge import UpdateOperation

        self._shard.update(UpdateOperation.overwrite_payload([point_id], payload))

    def delete(self, ids: Sequence[str]) -> None:
        from qdrant_edge import UpdateOperation

        if ids:
            self._shard.update(UpdateOperation.delete_points(list(ids)))

    def search(
        self, vector: np.ndarray, limit: int, search_filter: SearchFilter | None = None
    ) -> list[StoredHit]:
        from qdrant_edge import Query, QueryRequest, SearchParams

        exact = self.count() < EXACT_SEARCH_BELOW
        request = QueryRequest(
            limit=limit,
            query=Query.Nearest(np.asarray(vector, dtype=np.float32).tolist(), using="image"),
            filter=_edge_filter(search_filter),
            with_payload=True,
            params=SearchParams(exact=exact, hnsw_ef=None if exact else max(256, 4 * limit)),
        )
        return [StoredHit(str(p.id), float(p.score), dict(p.payload or {}))
                for p in self._shard.query(request)]

    def get_tokens(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        records = self._shard.retrieve(list(ids), False, ["tokens"])
        return {str(r.id): np.asarray(r.vector["tokens"], dtype=np.float32)
                for r in records if r.vector and "tokens" in r.vector}

    def get_vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        records = self._shard.retrieve(list(ids), False, ["image"])
        return {str(r.id): np.asarray(r.vector["image"], dtype=np.float32)
                for r in records if r.vector and "image" in r.vector}

    def get_payloads(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        records = self._shard.retrieve(list(ids), True, False)
        return {str(r.id): dict(r.payload or {}) for r in records}

    def iter_payloads(self) -> Iterator[tuple[str, dict[str, Any]]]:
        from qdrant_edge import ScrollRequest

        offset = None
        while True:
            records, offset = self._shard.scroll(
                ScrollRequest(offset=offset, limit=1000, with_payload=True, with_vector=False)
            )
            for record in records:
                yield str(record.id), dict(record.payload or {})
            if offset is None:
                return

    def count(self) -> int:
        from qdrant_edge import CountRequest

        return int(self._shard.count(CountRequest(exact=True)))

    def flush(self) -> None:
        self._shard.flush()

    def optimize(self) -> None:
        self._shard.optimize()

    def close(self) -> None:
        if self._shard is not None:
            self._shard.flush()
            self._shard.close()
            self._shard = None

    def __enter__(self) -> EdgeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _create_indexes(self) -> None:
        from qdrant_edge import PayloadSchemaType, UpdateOperation

        kinds = {"keyword": PayloadSchemaType.Keyword, "integer": PayloadSchemaType.Integer,
                 "datetime": PayloadSchemaType.Datetime}
        for name, kind in INDEXED_FIELDS.items():
            self._shard.update(UpdateOperation.create_field_index(name, kinds[kind]))


def _guard_busy(folder: Path, opener: Any) -> Any:
    try:
        return opener()
    except Exception as error:
        if "WouldBlock" in str(error) or "lock" in str(error).lower():
            raise StoreBusyError(
                f"The store at {folder} is open in another process (an ingest or the UI). "
                f"Wait for it to finish or close it, then try again."
            ) from error
        raise StoreError(f"Could not open the store at {folder}: {error}") from error


def _edge_config(info: CollectionInfo) -> Any:
    from qdrant_edge import (
        Distance,
        EdgeConfig,
        EdgeVectorParams,
        HnswIndexConfig,
        MultiVectorComparator,
        MultiVectorConfig,
        VectorStorageDatatype,
    )

    tokens = EdgeVectorParams(
        size=info.token_width,
        distance=Distance.Dot,
        multivector_config=MultiVectorConfig(MultiVectorComparator.MaxSim),
        datatype=VectorStorageDatatype.Float16,
        hnsw_config=HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10_000),
    )
    image = EdgeVectorParams(size=info.vector_size, distance=Distance.Cosine)
    return EdgeConfig(vectors={"image": image, "tokens": tokens})


def _edge_filter(search_filter: SearchFilter | None) -> Any:
    from qdrant_edge import FieldCondition, Filter, MatchAny, MatchValue, RangeDateTime, RangeFloat

    from search.filters import to_rfc3339

    if search_filter is None or search_filter.is_empty():
        return None
    must: list[Any] = []
    folder = search_filter.normalised_folder()
    if folder:
        must.append(FieldCondition("folders", match=MatchValue(folder)))
    if search_filter.formats:
        must.append(FieldCondition("format", match=MatchAny(search_filter.normalised_formats())))
    if search_filter.after or search_filter.before:
        must.append(FieldCondition("captured_at", range=RangeDateTime(
            gte=to_rfc3339(search_filter.after) if search_filter.after else None,
            lt=to_rfc3339(search_filter.before) if search_filter.before else None)))
    if search_filter.min_size is not None or search_filter.max_size is not None:
        must.append(FieldCondition("size", range=RangeFloat(
            gte=search_filter.min_size, lte=search_filter.max_size)))
    return Filter(must=must)


def open_store(location: str | Path, info: CollectionInfo | None = None) -> VectorStore:
    """Open a store by location: a folder (embedded Qdrant Edge, the default)."""
    return EdgeStore.open(location, info)

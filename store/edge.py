"""Qdrant Edge in-process on a folder: the default, embedded back end.

The collection's identity (``CollectionInfo``) is written beside the data in
``twinrank.json`` and checked on every open. The shard itself is held on a
``ShardLease``, so the UI and an ingest can share the folder (``store.lease``), and
other processes' reads go through the process holding it (``store.serve``).
Cached reranker tokens live beside the shard in ``tokens.bin`` (``store.tokens``: its
layout and crash rules), each point naming its record in its payload; collections made
before that file existed keep the ``tokens`` multivector in the shard.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from twinrank.store.filters import INDEXED_FIELDS, SearchFilter, indexed_payload
from twinrank.store.lease import ShardLease, is_writable, readable_copy
from twinrank.store.schema import (
    CENTRED_EF_CONSTRUCT,
    CENTRED_HNSW_M,
    CENTRED_VECTOR,
    IMAGE_VECTOR,
    PAYLOAD_GRAPH_LINKS,
    TOKENS_IN_FILE,
    TOKENS_VECTOR,
    CollectionInfo,
    PointRecord,
    SearchPlan,
    StoreBase,
    StoredHit,
    StoreError,
    check_info,
    crosses_gap,
    planned_search,
    query_for_centred,
)
from twinrank.store.serve import through_holder
from twinrank.store.tokens import TOKEN_SLOT, TokenFile

META_FILE = "twinrank.json"
SHARD_DIR = "shard"
WAIT_ENV = "TWINRANK_STORE_WAIT_S"
DEFAULT_WAIT_S = 15.0


def read_info(folder: Path) -> CollectionInfo | None:
    """The identity recorded in an embedded collection folder, or None when there is none."""
    meta = Path(folder).expanduser() / META_FILE
    if not meta.is_file():
        return None
    return CollectionInfo.from_dict(json.loads(meta.read_text()))


class EdgeStore(StoreBase):
    """Qdrant Edge in-process on a folder: the default, embedded back end.

    Example:
        >>> store = EdgeStore.open("photos.twinrank", info)  # creates it if missing
        >>> store.search(query_vector, limit=20)  # nothing ingested yet
        []
    """

    def __init__(self, folder: Path, lease: ShardLease, info: CollectionInfo,
                 tokens: TokenFile | None = None) -> None:
        self.folder = folder
        self.info = info
        self._lease = lease
        lease.serve(self)  # others' reads, whenever this process holds the folder
        self._tokens = tokens  # the side file, when the collection keeps tokens in one
        self._count: tuple[int, int] | None = None  # (lease generation, points)

    @classmethod
    def open(
        cls, folder: str | Path, info: CollectionInfo | None = None, wait_s: float | None = None
    ) -> EdgeStore:
        """Open the collection at ``folder``; create it when ``info`` is given and it is new.

        ``wait_s`` bounds how long an operation waits for another process (an ingest, the
        UI) to hand the folder over before it raises ``StoreBusyError`` (default
        ``$TWINRANK_STORE_WAIT_S`` or 15 s).
        """
        from qdrant_edge import EdgeShard

        if wait_s is None:
            wait_s = float(os.environ.get(WAIT_ENV, DEFAULT_WAIT_S))
        folder = Path(folder).expanduser()
        if folder.exists() and not folder.is_dir():
            raise StoreError(f"{folder} is a file, not a store folder. Pass a folder with "
                             f"--store: a new one, or one `twinrank ingest` made.")
        found = read_info(folder)
        shard_path = str(folder / SHARD_DIR)
        if found is None:
            if info is None:
                raise StoreError(
                    f"No twinrank collection at {folder}. Create one with "
                    f"`twinrank ingest IMAGES --store {folder}`."
                )
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise StoreError(f"Cannot create the store folder {folder} "
                                 f"({error.strerror or error}). Pass a folder you can write "
                                 f"with --store.") from None
            config = _edge_config(info)
            tokens = _token_file(folder, info)
            opener = _settling(lambda: _create_or_load(shard_path, config), tokens)
            store = cls(folder, ShardLease(folder, opener, wait_s), info, tokens)
            store._create_indexes()
            (folder / META_FILE).write_text(json.dumps(asdict(info), indent=2))
            return store
        check_info(found, info, str(folder))
        working, scratch = folder, None
        if not is_writable(folder):  # a read-only mount or a backup: search a private copy
            if info is not None:
                raise StoreError(f"The store at {folder} is read-only, so nothing can be "
                                 f"added to it. Copy it to a writable folder, or pass "
                                 f"another --store.")
            working = scratch = readable_copy(folder, SHARD_DIR)
            shard_path = str(working / SHARD_DIR)
        tokens = _token_file(folder, found, writable=scratch is None)
        lease = ShardLease(working, _settling(lambda: EdgeShard.load(shard_path), tokens),
                           wait_s, scratch=scratch)
        store = cls(folder, lease, found, tokens)
        store.count()  # open now, so a busy or broken folder fails here, not mid-query
        return store

    def _check_writable(self) -> None:
        if self._lease.read_only:  # a private copy of a read-only folder: writes would be lost
            raise StoreError(f"The store at {self.folder} is read-only, so nothing can be "
                             f"added to it or changed. Copy it to a writable folder, or pass "
                             f"another --store.")

    def upsert(self, records: Sequence[PointRecord]) -> None:
        self._check_writable()
        from qdrant_edge import Point, UpdateOperation

        if not records:
            return
        tokens = self._tokens
        in_file = self.info.token_layout == TOKENS_IN_FILE
        if in_file and tokens is None and any(r.image_tokens is not None for r in records):
            raise ValueError(f"The collection at {self.folder} keeps no image tokens "
                             f"(token_count {self.info.token_count}); upsert without them.")
        with self._lease.hold() as shard:
            centred = self._centred_for(records)
            try:
                slots: dict[str, int] = {}
                if tokens is not None:  # records first: a point never names an unwritten one
                    by_id = {r.id: r.image_tokens for r in records}
                    slots = tokens.stage(by_id, _token_slots(shard, list(by_id)))
                points = []
                for i, record in enumerate(records):
                    vectors: dict[str, Any] = {
                        IMAGE_VECTOR: record.image_vector.astype(np.float32).tolist()}
                    if centred is not None:
                        vectors[CENTRED_VECTOR] = centred[i].tolist()
                    if record.image_tokens is not None and not in_file:
                        vectors[TOKENS_VECTOR] = record.image_tokens.astype(np.float32).tolist()
                    payload = _written(record.payload, slots.get(record.id))
                    points.append(Point(record.id, vectors, payload))
                shard.update(UpdateOperation.upsert_points(points))
            finally:
                if tokens is not None:  # keep the records points now name, free the rest
                    tokens.settle(lambda ids: _token_slots(shard, ids))
            self._count = None
            self.refresh_image_mean()

    def set_payload(self, point_id: str, payload: dict[str, Any]) -> None:
        self._check_writable()
        from qdrant_edge import UpdateOperation

        with self._lease.hold() as shard:
            slot = None  # the point keeps naming its tokens' record, in the same write
            if self._tokens is not None:
                slot = _token_slots(shard, [point_id]).get(point_id)
            shard.update(UpdateOperation.overwrite_payload([point_id],
                                                           _written(payload, slot)))

    def _set_payload_fields(self, ids: Sequence[str], fields: dict[str, Any]) -> None:
        self._check_writable()
        from qdrant_edge import UpdateOperation

        with self._lease.hold() as shard:
            shard.update(UpdateOperation.set_payload(list(ids), fields))

    def delete(self, ids: Sequence[str]) -> None:
        self._check_writable()
        from qdrant_edge import UpdateOperation

        if ids:
            tokens = self._tokens
            with self._lease.hold() as shard:
                if tokens is not None:  # their records are freed once the points are gone
                    tokens.doubt(_token_slots(shard, list(ids)))
                try:
                    shard.update(UpdateOperation.delete_points(list(ids)))
                finally:
                    if tokens is not None:
                        tokens.settle(lambda found: _token_slots(shard, found))
                self._count = None

    @through_holder
    def search(
        self,
        vector: np.ndarray,
        limit: int,
        search_filter: SearchFilter | None = None,
        plan: SearchPlan | None = None,
        modality: str = "image",
    ) -> list[StoredHit]:
        """The ``limit`` nearest images to an image or text vector (``modality``); ``plan``
        overrides the policy (``schema.search_plan``). Scores are cosines to ``image``."""
        from qdrant_edge import (
            Prefetch,
            QuantizationSearchParams,
            Query,
            QueryRequest,
            SearchParams,
        )

        vector = np.asarray(vector, dtype=np.float32)
        query = Query.Nearest(vector.tolist(), using=IMAGE_VECTOR)
        info = self.info
        condition = edge_filter(search_filter, info.folder_formats)
        with self._lease.hold() as shard:

            def run(chosen: SearchPlan) -> list[StoredHit]:
                prefetches = None
                if chosen.candidates:
                    centred = query_for_centred(vector, info, modality)
                    prefetches = [Prefetch(
                        limit=chosen.candidates, filter=condition,
                        query=Query.Nearest(centred.tolist(), using=CENTRED_VECTOR),
                        params=SearchParams(  # int8 scores pick; `image` rescores exactly
                            exact=chosen.exact, hnsw_ef=chosen.hnsw_ef,
                            quantization=QuantizationSearchParams(rescore=False)))]
                request = QueryRequest(  # candidates are rescored on the original vectors
                    limit=limit, query=query, filter=condition, with_payload=True,
                    prefetches=prefetches,
                    params=SearchParams(exact=chosen.exact, hnsw_ef=chosen.hnsw_ef,
                                        quantization=QuantizationSearchParams(ignore=True)
                                        if chosen.candidates else None))
                return [StoredHit(str(p.id), float(p.score), _public(p.payload))
                        for p in shard.query(request)]

            return planned_search(run, self._points(shard), limit, plan, modality,
                                  crosses_gap(info), info,
                                  filtered=condition is not None)

    @through_holder
    def get_tokens(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """The cached (T, W) tokens of those ``ids`` that have them: float16 copies out of
        the side file (~1-2 ms for 20 BLIP-size sets), or, in a collection made before it,
        float32 from the ``tokens`` multivector (seconds at that size).

        Example:
            >>> store.get_tokens([hit.id for hit in hits])[hits[0].id].shape
            (16, 256)
        """
        if self.info.token_layout != TOKENS_IN_FILE:
            return super().get_tokens(ids)
        if self._tokens is None or not ids:
            return {}
        with self._lease.hold() as shard:  # no writer in any process while copying
            return self._tokens.read(_token_slots(shard, list(ids)))

    @through_holder
    def _named_vectors(self, ids: Sequence[str], name: str) -> dict[str, np.ndarray]:
        with self._lease.hold() as shard:
            records = shard.retrieve(list(ids), False, [name])
        return {str(r.id): np.asarray(r.vector[name], dtype=np.float32)
                for r in records if r.vector and name in r.vector}

    def _image_pages(self) -> Iterator[tuple[list[str], np.ndarray]]:
        offset = None
        while True:
            ids, vectors, offset = self._vector_page(offset)
            if ids:
                yield ids, vectors
            if offset is None:
                return

    @through_holder
    def _vector_page(self, offset: str | None) -> tuple[list[str], np.ndarray, str | None]:
        """One page of ``image`` vectors from ``offset``, and where the next one starts."""
        from qdrant_edge import ScrollRequest

        with self._lease.hold() as shard:
            records, after = shard.scroll(ScrollRequest(
                offset=offset, limit=1000, with_payload=False, with_vector=[IMAGE_VECTOR]))
        kept = [r for r in records if r.vector and IMAGE_VECTOR in r.vector]
        vectors = np.asarray([r.vector[IMAGE_VECTOR] for r in kept], dtype=np.float32)
        return [str(r.id) for r in kept], vectors, None if after is None else str(after)

    def _write_centred(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        self._check_writable()
        from qdrant_edge import PointVectors, UpdateOperation

        points = [PointVectors(i, {CENTRED_VECTOR: v.tolist()})
                  for i, v in zip(ids, vectors, strict=True)]
        with self._lease.hold() as shard:
            shard.update(UpdateOperation.update_vectors(points))

    def _save_info(self, info: CollectionInfo) -> None:
        self._check_writable()
        meta = self.folder / META_FILE
        staged = meta.with_suffix(".tmp")
        staged.write_text(json.dumps(asdict(info), indent=2))
        os.replace(staged, meta)
        self.info = info

    @through_holder
    def get_payloads(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        with self._lease.hold() as shard:
            records = shard.retrieve(list(ids), True, False)
        return {str(r.id): _public(r.payload) for r in records}

    def iter_payloads(self) -> Iterator[tuple[str, dict[str, Any]]]:
        offset = None
        while True:
            page, offset = self._payload_page(offset)
            yield from page
            if offset is None:
                return

    @through_holder
    def _payload_page(self, offset: str | None
                      ) -> tuple[list[tuple[str, dict[str, Any]]], str | None]:
        """One page of (id, payload) from ``offset``, and where the next one starts."""
        from qdrant_edge import ScrollRequest

        with self._lease.hold() as shard:
            records, after = shard.scroll(
                ScrollRequest(offset=offset, limit=1000, with_payload=True, with_vector=False))
        return ([(str(point.id), _public(point.payload)) for point in records],
                None if after is None else str(after))

    @through_holder
    def count(self) -> int:
        with self._lease.hold() as shard:
            return self._points(shard, fresh=True)

    def _points(self, shard: Any, fresh: bool = False) -> int:
        """The point count, cached until this process writes or the shard is reopened."""
        cached = self._count
        if fresh or cached is None or cached[0] != self._lease.generation:
            cached = (self._lease.generation, _count(shard))
            self._count = cached
        return cached[1]

    def flush(self) -> None:
        with self._lease.hold() as shard:
            shard.flush()

    def optimize(self) -> None:
        """Build the HNSW index and merge segments (minutes at 100k+ points)."""
        with self._lease.hold() as shard:
            shard.optimize()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[EdgeStore]:
        """Keep the folder for this block: other processes wait (up to their ``wait_s``).

        Example:
            >>> with store.exclusive():  # a multi-step change no reader should see half of
            ...     hits = store.search(query_vector, limit=2)
            ...     store.delete([hit.id for hit in hits])
            >>> store.count()
            4
        """
        with self._lease.hold(exclusive=True):
            yield self

    def release(self) -> bool:
        """Hand the folder back now (flushed) without closing the store; it reopens on use."""
        return self._lease.release()

    def close(self) -> None:
        try:
            self._lease.close()
        finally:
            if self._tokens is not None:
                self._tokens.close()

    def _index_field(self, name: str) -> None:
        self._check_writable()
        self._create_indexes(names=[name])

    def _create_indexes(self, links: bool | Collection[str] = PAYLOAD_GRAPH_LINKS,
                        names: Collection[str] = tuple(INDEXED_FIELDS)) -> None:
        """The payload indexes of ``INDEXED_FIELDS`` (or of those ``names``), with Qdrant's
        graph links per indexed value only if ``links`` (True: on every field; a
        collection: on those fields; the product: none, filtered queries scan; benches ask)."""
        from qdrant_edge import (
            DatetimeIndexParams,
            IntegerIndexParams,
            KeywordIndexParams,
            UpdateOperation,
        )

        def params(kind: str, linked: bool) -> Any:
            if kind == "keyword":
                return KeywordIndexParams(enable_hnsw=linked)
            if kind == "integer":
                return IntegerIndexParams(lookup=True, range=True, enable_hnsw=linked)
            return DatetimeIndexParams(enable_hnsw=linked)

        with self._lease.hold() as shard:
            for name in names:
                kind = INDEXED_FIELDS[name]
                linked = links if isinstance(links, bool) else name in links
                shard.update(UpdateOperation.create_field_index(name, params(kind, linked)))


def _token_file(folder: Path, info: CollectionInfo, writable: bool = True) -> TokenFile | None:
    """The collection's token side file, when it keeps tokens in one."""
    if info.token_layout != TOKENS_IN_FILE or info.token_count <= 0 or info.token_width <= 0:
        return None
    return TokenFile(folder, (info.token_count, info.token_width), writable)


def _settling(load: Callable[[], Any], tokens: TokenFile | None) -> Callable[[], Any]:
    """A shard opener that first settles what a killed write left in the side file."""
    if tokens is None:
        return load

    def opened() -> Any:
        shard = load()
        try:
            tokens.settle(lambda ids: _token_slots(shard, ids))
        except BaseException:
            shard.close()
            raise
        return shard

    return opened


def _token_slots(shard: Any, ids: list[str]) -> dict[str, int]:
    """The side-file slot each of these points names (points without one left out)."""
    if not ids:
        return {}
    records = shard.retrieve(list(ids), [TOKEN_SLOT], False)
    return {str(r.id): int(r.payload[TOKEN_SLOT]) for r in records
            if r.payload and r.payload.get(TOKEN_SLOT) is not None}


def _written(payload: Any, slot: int | None) -> dict[str, Any]:
    """A payload as stored: indexed fields made, and the point's token slot, if any."""
    written = indexed_payload(payload)
    written.pop(TOKEN_SLOT, None)
    if slot is not None:
        written[TOKEN_SLOT] = slot
    return written


def _public(payload: dict[str, Any] | None) -> dict[str, Any]:
    """A stored payload as callers see it: without the store's own token slot."""
    found = dict(payload or {})
    found.pop(TOKEN_SLOT, None)
    return found


def _create_or_load(shard_path: str, config: Any) -> Any:
    from qdrant_edge import EdgeShard

    if Path(shard_path).exists():
        return EdgeShard.load(shard_path)
    return EdgeShard.create(shard_path, config)


def _count(shard: Any) -> int:
    from qdrant_edge import CountRequest

    return int(shard.count(CountRequest(exact=True)))


def _edge_config(info: CollectionInfo) -> Any:
    from qdrant_edge import (
        Distance,
        EdgeConfig,
        EdgeVectorParams,
        HnswIndexConfig,
        Memory,
        MultiVectorComparator,
        MultiVectorConfig,
        ScalarQuantizationConfig,
        ScalarType,
        VectorStorageDatatype,
    )

    tokens = EdgeVectorParams(
        size=info.token_width,
        distance=Distance.Dot,
        multivector_config=MultiVectorConfig(MultiVectorComparator.MaxSim),
        datatype=VectorStorageDatatype.Float16,
        hnsw_config=HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10_000),
        memory=Memory.Cold,  # on disk (mmap), read per rerank: BLIP's are 886 kB per image
    )
    vectors = {IMAGE_VECTOR: EdgeVectorParams(size=info.vector_size, distance=Distance.Cosine)}
    if info.token_layout != TOKENS_IN_FILE:  # a collection made before the side file
        vectors[TOKENS_VECTOR] = tokens
    if info.centred:  # only a prefetch reads it: half precision, searched through int8
        vectors[CENTRED_VECTOR] = EdgeVectorParams(
            size=info.vector_size, distance=Distance.Cosine,
            datatype=VectorStorageDatatype.Float16,
            hnsw_config=HnswIndexConfig(m=CENTRED_HNSW_M, ef_construct=CENTRED_EF_CONSTRUCT,
                                        full_scan_threshold=10_000),
            quantization_config=ScalarQuantizationConfig(ScalarType.Int8, quantile=0.99))
    return EdgeConfig(vectors=vectors)


def edge_filter(search_filter: SearchFilter | None, paired: bool = False) -> Any:
    """``SearchFilter`` as a Qdrant Edge filter (None for no filter), condition by kind;
    ``paired``: the collection's points carry ``folder_formats``."""
    from qdrant_edge import FieldCondition, Filter, MatchAny, MatchValue, RangeDateTime, RangeFloat

    if search_filter is None or search_filter.is_empty():
        return None
    must: list[Any] = []
    for c in search_filter.conditions(paired):
        if c.kind == "match":
            must.append(FieldCondition(c.key, match=MatchValue(c.value)))
        elif c.kind == "match_any":
            must.append(FieldCondition(c.key, match=MatchAny(list(c.values))))
        elif c.kind == "time_range":
            must.append(FieldCondition(c.key, range=RangeDateTime(gte=c.gte, lt=c.lt)))
        else:
            must.append(FieldCondition(c.key, range=RangeFloat(gte=c.gte, lte=c.lte)))
    return Filter(must=must)

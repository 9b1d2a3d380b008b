"""Qdrant Edge in-process on a folder: the default, embedded back end.

The collection's identity (``CollectionInfo``) is written beside the data in
``twinrank.json`` and checked on every open. The shard itself is held on a
``ShardLease``, so the UI and an ingest can share the folder (``store.lease``), and
other processes' reads go through the process holding it (``store.serve``).
Cached reranker tokens live beside the shard in ``tokens.bin`` (``store.tokens``: its
layout and crash rules), each point naming its record in its payload; collections made
before that file existed keep the ``tokens`` multivector in the shard.

What twinrank records to tell damage from health (``store.record``): the identity and its
backup, the point count (widened before each write, narrowed after: a count outside it on
open is a one-line warning, kept in ``damage``), and a CRC-32 per point of its ``image``
vector as stored (payload key ``VECTOR_CRC``, hidden like ``TOKEN_SLOT``; Qdrant
renormalises a cosine vector unless its squared length is within 1e-6 of 1, so vectors are
normalised here first and read back after the write, and a point whose stored bits differ
anyway gets the checksum of what was stored). Every write first checks free space
(``store.space``): Qdrant's memory maps turn a full disk into SIGBUS, not an error.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import zlib
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from twinrank.store import record, space
from twinrank.store.filters import INDEXED_FIELDS, ImagePayload, SearchFilter, indexed_payload
from twinrank.store.lease import LOCK_FILE, ShardLease, is_writable, readable_copy
from twinrank.store.record import META_FILE as META_FILE  # re-exported
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
from twinrank.store.space import DiskFullError
from twinrank.store.tokens import TAG_BYTES, TOKEN_SLOT, TokenFile

SHARD_DIR = "shard"
VECTOR_CRC = "vector_crc"  # payload key: CRC-32 of the point's ``image`` vector as stored
PRIVATE_KEYS = (TOKEN_SLOT, VECTOR_CRC)  # the store's own payload keys, hidden from callers
NORMALISED = 1e-7  # |squared length - 1| below this is left as is (Qdrant's bound: 1e-6)
log = logging.getLogger(__name__)
WAIT_ENV = "TWINRANK_STORE_WAIT_S"
DEFAULT_WAIT_S = 15.0


def read_info(folder: Path) -> CollectionInfo | None:
    """The identity recorded in an embedded collection folder, or None when there is none;
    ``DamagedStoreError`` (a ``StoreError`` naming the file) when it is malformed."""
    return record.read_identity(Path(folder))


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
        self._full: DiskFullError | None = None  # why this is a private copy, if for space
        # one line when the store is known to be damaged (``store.record.count_warning``)
        self.damage: str | None = None
        self._warned_tokens = False

    @classmethod
    def open(
        cls, folder: str | Path, info: CollectionInfo | None = None, wait_s: float | None = None,
        warn: bool = True,
    ) -> EdgeStore:
        """Open the collection at ``folder``; create it when ``info`` is given and it is new.

        ``wait_s`` bounds how long an operation waits for another process (an ingest, the
        UI) to hand the folder over before it raises ``StoreBusyError`` (default
        ``$TWINRANK_STORE_WAIT_S`` or 15 s). A point count off the recorded one is logged
        as a warning unless ``warn`` is False (``twinrank check`` reports it itself); it
        is kept in ``damage`` either way.
        """
        from qdrant_edge import EdgeShard

        if wait_s is None:
            wait_s = float(os.environ.get(WAIT_ENV, DEFAULT_WAIT_S))
        folder = Path(folder).expanduser()
        if folder.exists() and not folder.is_dir():
            raise StoreError(f"{folder} is a file, not a store folder. Pass a folder with "
                             f"--store: a new one, or one `twinrank ingest` made.")
        _finish_repair(folder)
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
            _room_to_create(folder)
            config = _edge_config(info)
            tokens = _token_file(folder, info)
            opener = _settling(lambda: _create_or_load(shard_path, config), tokens)
            store = cls(folder, ShardLease(folder, opener, wait_s), info, tokens)
            with space.disk_full_as_error(folder, "creating the store"):
                store._create_indexes()
                record.write_identity(folder, info)
                record.write_points(folder, 0, 0)
            return store
        check_info(found, info, str(folder))
        working, scratch, full = folder, None, None
        if not is_writable(folder):  # a read-only mount or a backup: search a private copy
            if info is not None:
                raise StoreError(f"The store at {folder} is read-only, so nothing can be "
                                 f"added to it. Copy it to a writable folder, or pass "
                                 f"another --store.")
            working = scratch = readable_copy(folder, SHARD_DIR)
            shard_path = str(working / SHARD_DIR)
        else:
            full = _room_to_open(folder)
            if full is not None:  # search a private copy, where there is room for one
                if info is not None:
                    raise full
                working = scratch = _copy_for_lack_of_space(folder, full)
                shard_path = str(working / SHARD_DIR)
        tokens = _token_file(folder, found, writable=scratch is None)
        lease = ShardLease(working, _settling(lambda: EdgeShard.load(shard_path), tokens),
                           wait_s, scratch=scratch)
        store = cls(folder, lease, found, tokens)
        store._full = full
        points, with_vectors = store._counts()  # open now: a busy or broken folder fails here
        store.damage = record.count_warning(folder, points, with_vectors)
        if store.damage and warn:
            log.warning(store.damage)
        return store

    def _check_writable(self) -> None:
        if self._full is not None:  # a private copy, for want of space: writes would be lost
            raise self._full
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
        payload_bytes = sum(space.payload_size(r.payload) for r in records)
        self._ensure(space.write_need(len(records), payload_bytes, self._token_bytes(),
                                      self.info.vector_size),
                     f"writing {len(records)} images")
        images = [stored_vector(r.image_vector) for r in records]
        with self._lease.hold() as shard, \
                space.disk_full_as_error(self.folder, f"writing {len(records)} images"):
            centred = self._centred_for(records)
            self._record_range(shard, 0, len(records))
            try:
                slots: dict[str, int] = {}
                if tokens is not None:  # records first: a point never names an unwritten one
                    by_id = {r.id: r.image_tokens for r in records}
                    slots = tokens.stage(by_id, _token_slots(shard, list(by_id)))
                points = []
                for i, (point, image) in enumerate(zip(records, images, strict=True)):
                    vectors: dict[str, Any] = {IMAGE_VECTOR: image.tolist()}
                    if centred is not None:
                        vectors[CENTRED_VECTOR] = centred[i].tolist()
                    if point.image_tokens is not None and not in_file:
                        vectors[TOKENS_VECTOR] = point.image_tokens.astype(np.float32).tolist()
                    kept = {VECTOR_CRC: vector_crc(image)}
                    if slots.get(point.id) is not None:
                        kept[TOKEN_SLOT] = slots[point.id]
                    points.append(Point(point.id, vectors, _written(point.payload, kept)))
                shard.update(UpdateOperation.upsert_points(points))
                _check_stored(shard, {p.id: vector_crc(v) for p, v in zip(records, images,
                                                                            strict=True)})
            finally:
                if tokens is not None:  # keep the records points now name, free the rest
                    tokens.settle(lambda ids: _token_slots(shard, ids))
                self._count = None
                self._record_range(shard, 0, 0)
            self.refresh_image_mean()

    def set_payload(self, point_id: str, payload: ImagePayload) -> None:
        self._check_writable()
        from qdrant_edge import UpdateOperation

        self._ensure(space.write_need(1, space.payload_size(payload), 0, 0), "writing a payload")
        with self._lease.hold() as shard:
            # the point keeps its checksum and its tokens' record, in the same write
            kept = _private(shard, [point_id]).get(point_id, {})
            shard.update(UpdateOperation.overwrite_payload([point_id],
                                                           _written(payload, kept)))

    def _set_payload_fields(self, ids: Sequence[str], fields: dict[str, Any]) -> None:
        self._check_writable()
        from qdrant_edge import UpdateOperation

        self._ensure(space.write_need(len(ids), len(ids) * space.payload_size(fields), 0, 0),
                     f"rewriting {len(ids)} payloads")
        with self._lease.hold() as shard:
            shard.update(UpdateOperation.set_payload(list(ids), fields))

    def delete(self, ids: Sequence[str]) -> None:
        self._check_writable()
        from qdrant_edge import UpdateOperation

        if ids:
            tokens = self._tokens
            self._ensure(space.RESERVE, f"deleting {len(ids)} images")
            with self._lease.hold() as shard, \
                    space.disk_full_as_error(self.folder, f"deleting {len(ids)} images"):
                self._record_range(shard, len(ids), 0)
                if tokens is not None:  # their records are freed once the points are gone
                    tokens.doubt(_token_slots(shard, list(ids)))
                try:
                    shard.update(UpdateOperation.delete_points(list(ids)))
                finally:
                    if tokens is not None:
                        tokens.settle(lambda found: _token_slots(shard, found))
                    self._count = None
                    self._record_range(shard, 0, 0)

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
                with self._reading():
                    found = shard.query(request)
                return [StoredHit(str(p.id), float(p.score), _public(p.payload))
                        for p in found]

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
        with self._lease.hold() as shard, self._reading():  # no writer meanwhile
            slots = _token_slots(shard, list(ids))
            found = self._tokens.read(slots)
        if len(found) < len(slots) and not self._warned_tokens:
            self._warned_tokens = True
            log.warning("Warning: the cached tokens of %d of these images are missing or do "
                        "not match their checksums in %s, so their image files are read "
                        "instead. Run `twinrank check %s --repair` to re-embed them.",
                        len(slots) - len(found), self._tokens.path, self.folder)
        return found

    @through_holder
    def _named_vectors(self, ids: Sequence[str], name: str) -> dict[str, np.ndarray]:
        with self._lease.hold() as shard, self._reading():
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

        with self._lease.hold() as shard, self._reading():
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
        self._ensure(space.write_need(len(points), 0, 0, self.info.vector_size),
                     "rewriting centred vectors")
        with self._lease.hold() as shard:
            shard.update(UpdateOperation.update_vectors(points))

    def _save_info(self, info: CollectionInfo) -> None:
        self._check_writable()
        with space.disk_full_as_error(self.folder, "saving the collection record"):
            record.write_identity(self.folder, info)
        self.info = info

    @through_holder
    def get_payloads(self, ids: Sequence[str]) -> dict[str, ImagePayload]:
        with self._lease.hold() as shard, self._reading():
            records = shard.retrieve(list(ids), True, False)
        return {str(r.id): _public(r.payload) for r in records}

    def iter_payloads(self) -> Iterator[tuple[str, ImagePayload]]:
        offset = None
        while True:
            page, offset = self._payload_page(offset)
            yield from page
            if offset is None:
                return

    @through_holder
    def _payload_page(self, offset: str | None
                      ) -> tuple[list[tuple[str, ImagePayload]], str | None]:
        """One page of (id, payload) from ``offset``, and where the next one starts."""
        from qdrant_edge import ScrollRequest

        with self._lease.hold() as shard, self._reading():
            records, after = shard.scroll(
                ScrollRequest(offset=offset, limit=1000, with_payload=True, with_vector=False))
        return ([(str(point.id), _public(point.payload)) for point in records],
                None if after is None else str(after))

    @through_holder
    def count(self) -> int:
        with self._lease.hold() as shard, self._reading():
            return self._points(shard, fresh=True)

    @through_holder
    def _counts(self) -> tuple[int, int]:
        """(points, points with their ``image`` vector): flipped deleted flags hide
        vectors while the points stay (a filtered count: 0.4 ms at 600 points)."""
        from qdrant_edge import CountRequest, Filter, HasVectorCondition

        with self._lease.hold() as shard, self._reading():
            points = self._points(shard, fresh=True)
            with_vectors = int(shard.count(CountRequest(exact=True, filter=Filter(
                must=[HasVectorCondition(IMAGE_VECTOR)]))))
        return points, with_vectors

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """Qdrant's own error reading a damaged shard (a truncated file: "out of bounds")
        becomes one sentence naming the file, never a traceback."""
        try:
            yield
        except Exception as error:
            if type(error) is not Exception and type(error).__name__ != "PanicException":
                raise
            short = record.short_files(self.folder)
            named = (f"{', '.join(short)} {'is' if len(short) == 1 else 'are'} shorter than "
                     f"Qdrant made {'it' if len(short) == 1 else 'them'}" if short else
                     f"a file under {self.folder / SHARD_DIR} is damaged")
            raise record.DamagedStoreError(
                f"The store at {self.folder} cannot be read: {named} (Qdrant: "
                f"{str(error).splitlines()[0][:200]}). Run `twinrank check {self.folder}` to "
                f"see what is damaged, and `--repair` to fix it.") from None

    # what ``store.check`` reads: points as stored, the store's own keys included

    def id_pages(self, size: int = 1000) -> Iterator[list[str]]:
        """Every point id, a page at a time (read from the id tracker alone)."""
        from qdrant_edge import ScrollRequest

        offset = None
        while True:
            with self._lease.hold() as shard:
                records, offset = shard.scroll(ScrollRequest(
                    offset=offset, limit=size, with_payload=False, with_vector=False))
            yield [str(r.id) for r in records]
            if offset is None:
                return

    def stored(self, ids: Sequence[str], vectors: Sequence[str] = (),
               payload: bool = True) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
        """id -> (payload with the store's own keys, named vectors) as Qdrant holds them;
        Qdrant's own error (a damaged file) is raised as it comes."""
        with self._lease.hold() as shard:
            records = shard.retrieve(list(ids), payload, list(vectors) or False)
        return {str(r.id): (dict(r.payload or {}), dict(r.vector or {})) for r in records}

    @property
    def read_only(self) -> bool:
        """Whether this is a private copy (a read-only folder, or no room on its disk)."""
        return bool(self._lease.read_only)

    @property
    def token_file(self) -> TokenFile | None:
        """The token side file, when the collection keeps one."""
        return self._tokens

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
        self._ensure(space.shard_bytes(self.folder / SHARD_DIR) + space.RESERVE,
                     "building the search index (it writes merged copies of the segments)")
        with self._lease.hold() as shard:
            shard.optimize()

    def ensure_room(self, images: int) -> None:
        """Raise ``DiskFullError`` unless the disk has room for ``images`` more images (with
        an ordinary payload each): what ``twinrank ingest`` checks before it starts.

        Example:
            >>> store.ensure_room(32)  # plenty of space: nothing happens
        """
        self._check_writable()
        self._ensure(space.write_need(images, images * space.TYPICAL_PAYLOAD,
                                      self._token_bytes(), self.info.vector_size),
                     f"adding {images:,} images")

    def _ensure(self, needed: int, doing: str) -> None:
        """``DiskFullError`` (one sentence) unless ``needed`` bytes are free for ``doing``."""
        fits, free = space.needs_space(self.folder, needed)
        if not fits:
            raise DiskFullError(
                f"The disk holding the store {self.folder} has {space.human(free)} free; "
                f"{doing} needs about {space.human(needed)}. Nothing written before is lost: "
                f"free some space, then run the same command again to continue.",
                needed, free, space.per_image_need(self._token_bytes(), self.info.vector_size),
                self.folder)

    def _token_bytes(self) -> int:
        """Bytes of cached tokens per image on disk: a side-file record, or the multivector
        (stored half precision, and in single precision in the WAL)."""
        if self.info.token_count <= 0:
            return 0
        if self.info.token_layout == TOKENS_IN_FILE:
            return TAG_BYTES + self.info.bytes_per_image()
        return 3 * self.info.bytes_per_image()

    def _record_range(self, shard: Any, fewer: int, more: int) -> None:
        """Record the point count a write may leave (``store.record``): from ``fewer``
        below the count to ``more`` above it; (0, 0) after the write, the exact count. Not
        while the count is already off the record (the warning stands until a repair)."""
        if self.damage is not None or self._lease.read_only:
            return
        points = self._points(shard, fresh=not (fewer or more))
        record.write_points(self.folder, max(0, points - fewer), points + more)

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

        self._ensure(space.RESERVE + 2 * space.MB * len(names), "creating payload indexes")
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


def stored_vector(vector: np.ndarray) -> np.ndarray:
    """The ``image`` vector as Qdrant will store it: float32, normalised here (a cosine
    vector further than 1e-6 from unit length is renormalised by Qdrant, in its own
    rounding), so that its checksum can be taken before the write.

    Example:
        >>> stored_vector(np.array([3.0, 4.0])).tolist()
        [0.6000000238418579, 0.800000011920929]
    """
    vector = np.asarray(vector, dtype=np.float32).ravel()
    squared = float(np.dot(vector.astype(np.float64), vector.astype(np.float64)))
    if squared > 0 and abs(squared - 1) > NORMALISED:
        vector = (vector / np.float32(np.sqrt(squared))).astype(np.float32)
    return vector


def vector_crc(vector: np.ndarray | Sequence[float]) -> int:
    """CRC-32 of a vector's float32 bytes: what ``VECTOR_CRC`` records."""
    return zlib.crc32(np.asarray(vector, dtype=np.float32).tobytes())


def _check_stored(shard: Any, crcs: dict[str, int]) -> None:
    """Read the vectors just written back; a point whose stored bits differ from what was
    sent (Qdrant renormalised it after all) gets the checksum of what is stored."""
    from qdrant_edge import UpdateOperation

    for point in shard.retrieve(list(crcs), False, [IMAGE_VECTOR]):
        vectors = point.vector or {}
        if IMAGE_VECTOR not in vectors:
            continue
        stored = vector_crc(vectors[IMAGE_VECTOR])
        if stored != crcs[str(point.id)]:
            shard.update(UpdateOperation.set_payload([point.id], {VECTOR_CRC: stored}))


def _private(shard: Any, ids: list[str]) -> dict[str, dict[str, Any]]:
    """The store's own payload keys (``PRIVATE_KEYS``) of these points."""
    if not ids:
        return {}
    records = shard.retrieve(list(ids), list(PRIVATE_KEYS), False)
    return {str(r.id): {k: v for k, v in (r.payload or {}).items()
                        if k in PRIVATE_KEYS and v is not None} for r in records}


def _finish_repair(folder: Path) -> None:
    """Finish swapping in a collection ``twinrank check --repair`` rebuilt, if a kill (or
    a busy store) interrupted it; only while no process holds the folder."""
    if not (folder / record.REPAIRED_DIR).is_dir() or not is_writable(folder):
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            record.finish_swap(folder)
        finally:
            os.close(fd)  # (closing releases the lock)


def _room_to_create(folder: Path) -> None:
    """``DiskFullError`` unless a new collection fits on ``folder``'s disk."""
    needed = space.CREATE_BYTES[space.fills_holes(folder)] + space.RESERVE
    fits, free = space.needs_space(folder, needed)
    if not fits:
        raise DiskFullError(
            f"The disk holding {folder} has {space.human(free)} free; creating a store "
            f"needs about {space.human(needed)}. Nothing was written: free some space, or "
            f"pass another --store.", needed, free, folder=folder)


def _room_to_open(folder: Path) -> DiskFullError | None:
    """What writes would say when the shard cannot be opened in place for want of space
    (opening replays the WAL and, on tmpfs, fills the maps' holes); None when it can."""
    needed = space.open_need(folder / SHARD_DIR)
    fits, free = space.needs_space(folder, needed)
    if fits:
        return None
    return DiskFullError(
        f"The disk holding the store {folder} has {space.human(free)} free; opening it to "
        f"write needs about {space.human(needed)}. Nothing written before is lost: free some "
        f"space, then run the same command again to continue.", needed, free, folder=folder)


def _copy_for_lack_of_space(folder: Path, full: DiskFullError) -> Path:
    """A private copy to search a store whose disk has no room to open it in place."""
    try:
        return readable_copy(folder, SHARD_DIR)
    except StoreError as error:
        raise DiskFullError(
            f"The disk holding the store {folder} has {space.human(full.free)} free and "
            f"opening it needs about {space.human(full.needed)}; a private copy to search "
            f"could not be made either ({error}). Nothing is lost: free some space, then "
            f"try again.", full.needed, full.free, folder=folder) from None


def _token_slots(shard: Any, ids: list[str]) -> dict[str, int]:
    """The side-file slot each of these points names (points without one left out)."""
    if not ids:
        return {}
    records = shard.retrieve(list(ids), [TOKEN_SLOT], False)
    return {str(r.id): int(r.payload[TOKEN_SLOT]) for r in records
            if r.payload and r.payload.get(TOKEN_SLOT) is not None}


def _written(payload: Any, kept: dict[str, Any]) -> dict[str, Any]:
    """A payload as stored: indexed fields made, and the store's own keys (``kept``: the
    vector's checksum, the token slot)."""
    written = indexed_payload(payload)
    for key in PRIVATE_KEYS:
        written.pop(key, None)
    written.update(kept)
    return written


def _public(payload: dict[str, Any] | None) -> ImagePayload:
    """A stored payload as callers see it: without the store's own keys."""
    found = dict(payload or {})
    for key in PRIVATE_KEYS:
        found.pop(key, None)
    return cast(ImagePayload, found)


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

"""An embedded collection's cached reranker tokens, in a memory-mapped side file.

Qdrant Edge hands a multivector back as nested Python lists: at BLIP-base size (577 x 768
tokens per image) the 20 token sets of one rerank took 1.3-1.9 s to read, and opening a
store that held them cost ~0.6 GB of RAM. So an embedded collection made since this file
exists (``CollectionInfo.token_layout == "file"``) keeps its tokens here instead, beside the
shard, and reads them in milliseconds (``bench/token_read_bench.py``).

Layout of ``FOLDER/tokens.bin``: a ``HEADER_BYTES`` header (magic, layout version, T, W,
bytes per record), then fixed-size records, one per *slot*: a ``TAG_BYTES`` tag (the 16
bytes of the owning point's UUID, all zero when the slot is free; then ``CRC_MARK`` and the
CRC-32 of the record's tokens, which ``twinrank check`` verifies: records written before the
checksum existed have zeros there and are not verified), then the (T, W) float16 tokens,
row-major. A point names its slot in its payload (``TOKEN_SLOT``), written in the
same Qdrant upsert as the point itself, so the point and the name of its record appear
together. A record belongs to a point when the point's payload names the slot *and* the
slot's tag is the point's id; anything else is stale and reads as missing.

Crash rules (a SIGKILL at any instant; power loss is not covered):

- a write first saves an *intent* (``tokens.intent``, replaced atomically): every slot the
  batch may leave in doubt, with its id (new slots, and the slots the batch's points or the
  deleted points had). Then new records: the file is grown to cover them, each record's
  tokens are written, then its tag. Then the Qdrant upsert (or delete). Then ``settle``;
- ``settle`` resolves the intent against the points: a slot whose id's point names it is
  kept; any other is untagged and put on the free list (``tokens.free``, replaced
  atomically); then the intent goes. It runs after every write and whenever a process
  opens the shard (holding its lock), and does the same thing twice if killed halfway;
- so, once the store is next opened: every point's slot is tagged with it (its record was
  complete before the point was written), and no slot is tagged with an id that is not a
  point naming it (only the intent's slots could be, and settling untagged them). Records
  of a killed batch, at the tail or in reused slots, become free slots.

Space: deleting points frees their slots; re-ingesting a point writes a new record and
frees the old one; new records take the lowest free slots before the file grows. The file
never shrinks, so a map held by another process never reaches past its end (no SIGBUS).
Writes are ordinary ``pwrite`` calls: a full disk raises ``OSError``, never a fault in a
memory map. Reads copy records out of a read-only ``mmap`` while the caller holds the shard
(so no writer in any process runs meanwhile); opening maps nothing, so RAM grows only by
what is read.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import threading
import uuid
import zlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np

from twinrank.store.schema import StoreError

TOKENS_FILE = "tokens.bin"
FREE_FILE = "tokens.free"
INTENT_FILE = "tokens.intent"
TOKEN_SLOT = "token_slot"  # payload key: the point's slot in TOKENS_FILE
MAGIC = b"TWNRKTOK"
LAYOUT_VERSION = 1
HEADER = struct.Struct("<8sIIIQ")  # magic, layout version, T, W, bytes per record
HEADER_BYTES = 64
TAG_BYTES = 64  # 16 bytes of UUID, the rest reserved; keeps the tokens 64-byte aligned
DTYPE = np.dtype(np.float16)
FREE_TAG = bytes(16)
CRC_MARK = b"crc1"  # after the UUID: the next 4 bytes are the tokens' CRC-32 (little-endian)
TAG_CHECKED = 16 + len(CRC_MARK) + 4

# Given the ids in doubt, the slot each one's point names (an id without a point, or whose
# point names no slot, is left out).
SlotLookup = Callable[[list[str]], dict[str, int]]


def tag_of(point_id: str) -> bytes:
    """The 16-byte tag of a point id (a UUID, as ``schema.point_id_for`` makes them)."""
    try:
        return uuid.UUID(str(point_id)).bytes
    except ValueError:
        raise ValueError(f"Point ids of an embedded collection are UUIDs, not {point_id!r}.") \
            from None


def record_bytes(shape: tuple[int, int]) -> int:
    """Bytes per slot: the tag, then the tokens, rounded up to 64 bytes."""
    data = shape[0] * shape[1] * DTYPE.itemsize
    return TAG_BYTES + -(-data // 64) * 64


class TokenFile:
    """The side file of one collection folder; ``shape`` is (tokens, width) per image.

    Example:
        >>> tokens = TokenFile(folder, (577, 768))
        >>> point_id = "00000000-0000-0000-0000-000000000001"
        >>> slots = tokens.stage({point_id: np.ones((577, 768))}, previous={})
        >>> # ...the upsert, whose point names slots[point_id] in its payload, then:
        >>> tokens.settle(lambda ids: slots)  # slots that points name are kept
        >>> tokens.read(slots)[point_id].shape, tokens.free_slots()
        ((577, 768), [])
    """

    def __init__(self, folder: Path, shape: tuple[int, int], writable: bool = True) -> None:
        self.folder = Path(folder)
        self.path = self.folder / TOKENS_FILE
        self.shape = (int(shape[0]), int(shape[1]))
        self.record = record_bytes(self.shape)
        self.writable = writable
        self._fd: int | None = None
        self._map: mmap.mmap | None = None
        self._lock = threading.RLock()

    # reading

    def read(self, slots: Mapping[str, int]) -> dict[str, np.ndarray]:
        """Copies of the (T, W) float16 tokens of ``slots`` (id -> slot); a record that is
        not tagged with its id (stale, or beyond the file) or does not match its checksum
        (damaged) is left out."""
        out: dict[str, np.ndarray] = {}
        with self._lock:
            view = self._mapped()
            if view is None:
                return out
            count = self.shape[0] * self.shape[1]
            for point_id, slot in slots.items():
                start = self._offset(slot)
                if slot < 0 or start + self.record > len(view):
                    continue
                tag = view[start:start + TAG_CHECKED]
                if tag[:16] != tag_of(point_id):
                    continue
                data = view[start + TAG_BYTES:start + TAG_BYTES + count * DTYPE.itemsize]
                if tag[16:20] == CRC_MARK and \
                        zlib.crc32(data) != int.from_bytes(tag[20:24], "little"):
                    continue
                out[point_id] = np.frombuffer(data, DTYPE).reshape(self.shape).copy()
        return out

    def tags(self) -> dict[int, str]:
        """Every tagged slot and its id: what a check of the crash rules compares with the
        points (a full pass over the file's tags)."""
        found: dict[int, str] = {}
        with self._lock:
            fd = self._open()
            if fd is None:
                return found
            for slot in range(self._slots(fd)):
                tag = os.pread(fd, 16, self._offset(slot))
                if tag != FREE_TAG:
                    found[slot] = str(uuid.UUID(bytes=tag))
        return found

    def verify(self, slots: Mapping[str, int]) -> dict[str, str]:
        """What is wrong with each of these records (id -> slot), checked against the
        checksum written with it: "missing" (beyond the end of the file, or not tagged with
        its id), "damaged" (its tokens do not match their checksum); ids whose record is
        intact, or was written before checksums existed, are left out. Reads with
        ``pread``, record by record, mapping nothing.

        Example:
            >>> tokens = TokenFile(folder, (2, 4))
            >>> point_id = "00000000-0000-0000-0000-000000000001"
            >>> slots = tokens.stage({point_id: np.ones((2, 4))}, previous={})
            >>> tokens.verify(slots), tokens.verify({point_id: 7})
            ({}, {'00000000-0000-0000-0000-000000000001': 'missing'})
        """
        found: dict[str, str] = {}
        with self._lock:
            fd = self._open()
            data_bytes = self.shape[0] * self.shape[1] * DTYPE.itemsize
            end = os.fstat(fd).st_size if fd is not None else 0
            for point_id, slot in slots.items():
                start = self._offset(slot)
                if fd is None or slot < 0 or start + TAG_BYTES + data_bytes > end:
                    found[point_id] = "missing"
                    continue
                tag = os.pread(fd, TAG_CHECKED, start)
                if tag[:16] != tag_of(point_id):
                    found[point_id] = "missing"
                elif tag[16:20] == CRC_MARK and int.from_bytes(tag[20:24], "little") != \
                        zlib.crc32(os.pread(fd, data_bytes, start + TAG_BYTES)):
                    found[point_id] = "damaged"
        return found

    def free_slots(self) -> list[int]:
        """The slots the next writes will take first, lowest first."""
        with self._lock:
            return sorted(self._load_free())

    def slot_count(self) -> int:
        """Slots the file holds, free or used."""
        with self._lock:
            fd = self._open()
            return 0 if fd is None else self._slots(fd)

    # writing: stage, the caller's Qdrant write, settle

    def stage(self, tokens: Mapping[str, np.ndarray | None],
              previous: Mapping[str, int]) -> dict[str, int]:
        """Write the records of a batch about to be upserted; returns id -> slot for the
        ids that have tokens (the payloads' ``TOKEN_SLOT``).

        ``tokens`` maps each point of the batch to its (T, W) tokens, or None for a point
        upserted without them; ``previous`` the slots those points name now (freed by
        ``settle`` once the upsert replaced them). Call ``settle`` after the upsert, also
        when it failed.
        """
        self._check_writable()
        for point_id, value in tokens.items():
            if value is not None and tuple(value.shape) != self.shape:
                raise ValueError(f"Tokens of {point_id} have shape {tuple(value.shape)}; this "
                                 f"collection keeps {self.shape}.")
        with self._lock:
            fd = self._open(create=True)
            assert fd is not None
            free = sorted(self._load_free())
            end = self._slots(fd)
            chosen: dict[str, int] = {}
            for point_id, value in tokens.items():
                if value is None:
                    continue
                if free:
                    chosen[point_id] = free.pop(0)
                else:
                    chosen[point_id], end = end, end + 1
            doubtful = [(slot, point_id) for point_id, slot in chosen.items()]
            doubtful += [(slot, point_id) for point_id, slot in previous.items()
                         if point_id in tokens]
            if not doubtful:
                return chosen
            self._save_intent(doubtful)
            self._grow(fd, end)
            for point_id, slot in chosen.items():
                value = np.ascontiguousarray(tokens[point_id], dtype=DTYPE)
                start = self._offset(slot)
                data = value.tobytes()
                _write_all(fd, data, start + TAG_BYTES)  # the tokens, then the tag (and
                _write_all(fd, tag_of(point_id) + CRC_MARK  # their checksum): a tag means
                           + zlib.crc32(data).to_bytes(4, "little"), start)  # complete
            return chosen

    def doubt(self, slots: Mapping[str, int]) -> None:
        """Before deleting points: their slots (id -> slot) are in doubt until ``settle``."""
        self._check_writable()
        if slots:
            with self._lock:
                self._save_intent([(slot, point_id) for point_id, slot in slots.items()])

    def settle(self, lookup: SlotLookup) -> None:
        """Resolve a pending intent against the points (``lookup``): slots whose point
        names them are kept, the others untagged and freed; then the intent goes. Nothing
        to do without an intent; on a read-only folder nothing is changed."""
        if not self.writable:
            return
        with self._lock:
            intent = self.folder / INTENT_FILE
            if not intent.is_file():
                return
            doubtful = [(int(slot), str(point_id))
                        for slot, point_id in json.loads(intent.read_text())]
            named = lookup(sorted({point_id for _, point_id in doubtful}))
            fd = self._open(create=True)
            assert fd is not None
            self._grow(fd, max(slot for slot, _ in doubtful) + 1 if doubtful else 0)
            free = self._load_free()
            for slot, point_id in doubtful:
                if named.get(point_id) == slot:
                    free.discard(slot)
                else:
                    _write_all(fd, FREE_TAG, self._offset(slot))
                    free.add(slot)
            self._save_free(free)
            intent.unlink()

    def close(self) -> None:
        with self._lock:
            self._map = None  # a view still held elsewhere keeps it alive until dropped
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    # internals

    def _check_writable(self) -> None:
        if not self.writable:
            raise StoreError(f"The store at {self.folder} is read-only, so nothing can be "
                             f"added to it or changed. Copy it to a writable folder, or pass "
                             f"another --store.")

    def _offset(self, slot: int) -> int:
        return HEADER_BYTES + slot * self.record

    def _slots(self, fd: int) -> int:
        return max(0, (os.fstat(fd).st_size - HEADER_BYTES) // self.record)

    def _open(self, create: bool = False) -> int | None:
        """The file's descriptor (opened once; created with its header when ``create``)."""
        if self._fd is not None:
            return self._fd
        if not self.path.exists():
            if not create:
                return None
            staged = self.path.with_suffix(".new")
            staged.write_bytes(HEADER.pack(MAGIC, LAYOUT_VERSION, *self.shape, self.record)
                               .ljust(HEADER_BYTES, b"\0"))
            os.replace(staged, self.path)  # a file that exists has its header
        fd = os.open(self.path, os.O_RDWR if self.writable else os.O_RDONLY)
        header = os.pread(fd, HEADER.size, 0)
        expected = (MAGIC, LAYOUT_VERSION, *self.shape, self.record)
        if len(header) < HEADER.size or HEADER.unpack(header) != expected:
            os.close(fd)
            raise StoreError(f"The token file {self.path} does not match its collection "
                             f"(another layout or token shape). Re-ingest into a new --store.")
        self._fd = fd
        return fd

    def _mapped(self) -> mmap.mmap | None:
        """A read-only map of the whole file, made again when the file has grown."""
        fd = self._open()
        if fd is None:
            return None
        size = os.fstat(fd).st_size
        if self._map is None or len(self._map) != size:
            self._map = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
        return self._map

    def _grow(self, fd: int, slots: int) -> None:
        """Extend the file (sparse, zero tags) to hold ``slots`` records; never shrinks."""
        if self._slots(fd) < slots:
            os.ftruncate(fd, self._offset(slots))

    def _load_free(self) -> set[int]:
        path = self.folder / FREE_FILE
        if not path.is_file():
            return set()
        return {int(s) for s in np.fromfile(path, dtype="<i8")}

    def _save_free(self, free: Iterable[int]) -> None:
        staged = self.folder / (FREE_FILE + ".new")
        np.asarray(sorted(free), dtype="<i8").tofile(staged)
        os.replace(staged, self.folder / FREE_FILE)

    def _save_intent(self, doubtful: list[tuple[int, str]]) -> None:
        """Record slots in doubt, added to any intent a failed settle left behind."""
        path = self.folder / INTENT_FILE
        pending = [tuple(entry) for entry in json.loads(path.read_text())] \
            if path.is_file() else []
        staged = self.folder / (INTENT_FILE + ".new")
        staged.write_text(json.dumps(pending + doubtful))
        os.replace(staged, self.folder / INTENT_FILE)


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written

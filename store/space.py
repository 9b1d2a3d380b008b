"""Free space: what an embedded collection needs on its disk, checked before Qdrant asks.

Qdrant Edge writes its segments through memory maps, so a full disk does not raise: the
process dies of SIGBUS (exit 135) with no output, in an ingest and in a search alike
(opening a shard replays its write-ahead log and rewrites small files). So the store
checks free space (``shutil.disk_usage`` of its folder) *before* each thing that writes,
and raises ``DiskFullError`` (one sentence: what it needs, what is free, nothing lost) when
it would not fit. What each thing needs was measured (tiny model, 64-d vectors and 16 x
256 tokens, and 512-d vectors without tokens; ext4 and tmpfs):

- **a write of N images**: N x (the token record + Qdrant's share) x ``WRITE_MARGIN`` +
  ``RESERVE``. Qdrant's share is ``VECTOR_COPIES`` bytes per vector dimension (the
  ``image`` vector in float32, its ``centred`` copy in float16, both in float32 in the
  WAL), ``POINT_BYTES`` of bookkeeping, and the payload's JSON three times (payload
  storage, WAL, indexes): 5 kB for a 64-d image with a 700-byte payload (measured 2.7 kB
  besides its 8.3 kB token record), 11.3 kB at 512-d (measured 8.9-13.7 kB). ``RESERVE``
  keeps room for what a write touches besides the images (a new page in each of some 40
  mapped files, segment metadata, the flush and close after).
- **creating a collection**: ``CREATE_BYTES`` (tmpfs: 14.9 MB, its flag files are filled
  at once; ext4: 0.3 MB, they stay sparse).
- **opening one**: ``RESERVE``, plus, on a filesystem where reading a hole through a
  memory map allocates it (tmpfs: Qdrant populates its maps on load), every hole in the
  shard's mapped files (a store of 60 tiny-model images made on tmpfs needs 97 MB more
  to open: three 32 MB chunk files). On ext4 opening added nothing measurable.

A store that cannot be opened in place for lack of space is searched from a private copy
in the temporary folder when that has room (``store.lease.readable_copy``; sparse, so it
takes about what the shard holds), as a read-only store is; a write to it raises
``DiskFullError``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from twinrank.store.schema import StoreError

MB = 1_000_000
VECTOR_COPIES = 14  # bytes per dimension: 4 (image) + 2 (centred) + 4 + 4 (both in the WAL)
POINT_BYTES = 2_000  # Qdrant's bookkeeping per point: id tracker, versions, index entries
PAYLOAD_COPIES = 3  # payload storage, the WAL, the payload indexes
TYPICAL_PAYLOAD = 700  # bytes of payload JSON for a photo at a short path
WRITE_MARGIN = 1.5
RESERVE = 4 * MB
CREATE_BYTES = {True: 15 * MB, False: 1 * MB}  # (holes filled on read) -> bytes
WAL_DIR = "wal"
# Filesystems whose pages live in memory: a read fault on a hole of a shared map
# allocates a page, so Qdrant's populating its maps on open fills every hole.
FILLED_ON_READ = frozenset({"tmpfs", "ramfs", "hugetlbfs", "shm"})
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(StoreError):
    """Not enough free space for a write (or an open) of an embedded collection.

    ``needed`` and ``free`` are bytes; ``per_image`` the estimate per image of a write
    (0 for an open), so a caller can say what the rest of its work needs; ``folder`` the
    store's.
    """

    def __init__(self, message: str, needed: int = 0, free: int = 0,
                 per_image: int = 0, folder: Path | None = None) -> None:
        super().__init__(message)
        self.needed = needed
        self.free = free
        self.per_image = per_image
        self.folder = folder


def human(size: float) -> str:
    """Bytes for a person: ``human(3_400_000) == '3.4 MB'``."""
    for unit in ("bytes", "kB", "MB", "GB"):
        if abs(size) < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"  # pragma: no cover


def free_bytes(path: Path) -> int:
    """Free bytes (for this user) on the filesystem holding ``path`` or its nearest parent."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def filesystem_type(path: Path) -> str:
    """The filesystem type holding ``path`` (``/proc/self/mountinfo``; '' elsewhere)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        device = os.stat(path).st_dev
    except OSError:
        return ""
    return mount_types().get((os.major(device), os.minor(device)), "")


def fills_holes(path: Path) -> bool:
    """Whether opening a shard at ``path`` fills the holes of its mapped files."""
    return filesystem_type(path) in FILLED_ON_READ


def write_need(images: int, payload_bytes: int, token_record: int, vector_size: int) -> int:
    """Bytes a write of ``images`` images (``payload_bytes`` of payload JSON in all, each
    with a ``token_record`` and a vector of ``vector_size``) needs, reserve included.

    Example:
        >>> human(write_need(32, 32 * 700, 8256, 64))
        '4.6 MB'
    """
    per_image = token_record + VECTOR_COPIES * vector_size + POINT_BYTES
    return int((images * per_image + PAYLOAD_COPIES * payload_bytes) * WRITE_MARGIN) + RESERVE


def per_image_need(token_record: int, vector_size: int) -> int:
    """The estimate per image of a typical photo, margin included (no reserve)."""
    return (write_need(1, TYPICAL_PAYLOAD, token_record, vector_size) - RESERVE)


def payload_size(payload: Any) -> int:
    """Bytes of a payload as JSON (what Qdrant stores, give or take)."""
    return len(json.dumps(payload, default=str))


def open_need(shard: Path) -> int:
    """Bytes opening the shard at ``shard`` may allocate (see the module notes)."""
    need = RESERVE
    if fills_holes(shard):
        need += sum(max(0, size - used) for size, used in _mapped_files(shard))
    return need


def copy_need(shard: Path, target: Path) -> int:
    """Bytes a sparse private copy of ``shard`` under ``target`` takes, and then opening it."""
    files = list(_mapped_files(shard, with_wal=True))
    held = sum(used for _, used in files)  # zero blocks are skipped: at most this
    if fills_holes(target):  # opening the copy then fills its holes
        held = sum(size for size, _ in _mapped_files(shard)) + \
            sum(used for size, used in _wal_files(shard))
    return held + RESERVE


def shard_bytes(shard: Path) -> int:
    """Bytes the shard's files hold on disk."""
    return sum(used for _, used in _mapped_files(shard, with_wal=True))


def needs_space(folder: Path, needed: int) -> tuple[bool, int]:
    """(whether ``needed`` bytes fit on ``folder``'s disk, the free bytes)."""
    free = free_bytes(folder)
    return free >= needed, free


@contextlib.contextmanager
def disk_full_as_error(folder: Path, doing: str) -> Iterator[None]:
    """An ``OSError`` for want of space (ENOSPC, EDQUOT) becomes ``DiskFullError``: the
    plain writes (the token file, small records) raise it where a memory map would not."""
    try:
        yield
    except OSError as error:
        if error.errno not in NO_SPACE:
            raise
        free = free_bytes(folder)
        raise DiskFullError(
            f"The disk holding {folder} is full ({human(free)} free) while {doing}. "
            f"Nothing written before is lost: free some space, then run the same command "
            f"again.", free=free, folder=folder) from None


def _mapped_files(shard: Path, with_wal: bool = False) -> Iterator[tuple[int, int]]:
    """(apparent size, bytes allocated) of each file in the shard; the WAL's only if asked
    (Qdrant maps its segments whole, but writes the WAL as it goes)."""
    for place, folders, files in os.walk(shard):
        if not with_wal and Path(place) == Path(shard):
            folders[:] = [f for f in folders if f != WAL_DIR]
        for name in files:
            with contextlib.suppress(OSError):
                info = os.stat(os.path.join(place, name))
                yield info.st_size, info.st_blocks * 512


def _wal_files(shard: Path) -> Iterator[tuple[int, int]]:
    yield from _mapped_files(Path(shard) / WAL_DIR, with_wal=True)


def mount_types() -> dict[tuple[int, int], str]:
    """Filesystem type by device number, from ``/proc/self/mountinfo`` (empty elsewhere)."""
    types: dict[tuple[int, int], str] = {}
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields = line.split()
            major, minor = fields[2].split(":")
            types[(int(major), int(minor))] = fields[fields.index("-") + 1]
    return types

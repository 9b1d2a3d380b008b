"""``twinrank check --repair``: rebuild a damaged collection from what is intact and the files.

A repair never edits Qdrant's damaged files in place (a truncated id tracker that is
appended to can be misread on the next open). It builds a fresh collection beside the old
one, in ``STORE/.repaired``, with the same identity (model, image mean, measured search
plan):

1. every point ``store.check`` found intact, copied as it is (vector, tokens, payload);
2. every damaged point whose payload is readable, re-embedded from the first of its files
   that still has the same content (its payload kept), or dropped when none has;
3. points Qdrant lost, or whose payload cannot be read, when their ids are known (a
   collection that caches tokens keeps records tagged with them in ``tokens.bin``): found
   again by walking the folders of the collection's images, reading only files the store
   does not already know, and embedded with a payload made from their files.

Then, holding the store's lock, the rebuilt files replace the old ones one by one
(``store.record.finish_swap``: an interrupted swap is finished on the next open). A
damaged ``twinrank.json`` alone is restored from its backup, with no rebuild.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from twinrank.ingest.walk import iter_image_files
from twinrank.ingest.write import FileFacts, add_path, build_payload, make_record
from twinrank.models.images import ImageReadError, decode_image, read_hashed
from twinrank.store import (
    CollectionInfo,
    EdgeStore,
    PointRecord,
    StoreBusyError,
    check_info,
    point_id_for,
    record,
    space,
)
from twinrank.store.check import CheckReport, check_store
from twinrank.store.edge import PRIVATE_KEYS, SHARD_DIR
from twinrank.store.filters import ImagePayload
from twinrank.store.lease import LOCK_FILE
from twinrank.store.record import BACKUP_FILE, META_FILE, REPAIRED_DIR, DamagedStoreError
from twinrank.store.space import DiskFullError
from twinrank.store.tokens import TOKENS_FILE

if TYPE_CHECKING:
    from twinrank.models.encode import ImageEmbedder

LOCK_WAIT_S = 60.0  # how long the swap waits for another process to hand the store over


@dataclass(frozen=True)
class RepairJob:
    """Which collection to repair, and where its model runs."""

    store: Path
    device: str | None = None
    batch_size: int = 32


@dataclass
class RepairOutcome:
    """What a rebuild did, for one line."""

    kept: int = 0
    reembedded: int = 0
    dropped: int = 0
    found_again: int = 0
    not_found: int = 0
    unnamed_lost: int = 0  # points Qdrant lost whose ids nothing recorded
    seconds: float = 0.0
    folders: list[str] = field(default_factory=list)

    def summary(self, folder: Path) -> str:
        text = (f"Rebuilt {folder} in {self.seconds:.1f} s: kept {self.kept:,} intact images, "
                f"re-embedded {self.reembedded:,} damaged ones from their files, found "
                f"{self.found_again:,} lost ones again, dropped {self.dropped:,} whose files "
                f"are gone")
        if self.not_found:
            text += (f"; {self.not_found:,} lost images were not found under the "
                     f"{len(self.folders):,} folders the collection covers: ingest their "
                     f"folder again to add them back")
        if self.unnamed_lost:
            text += (f"; Qdrant lost {self.unnamed_lost:,} images nothing recorded the ids "
                     f"of: ingest your folders again to add them back")
        return text + "."


def repair_store(job: RepairJob) -> tuple[list[str], bool]:
    """Repair the collection at ``job.store``; (lines for the user, whether it is intact
    now). Raises ``StoreError`` (one sentence) when it cannot be repaired from here.

    Example:
        >>> lines, ok = repair_store(RepairJob(Path("store")))
        >>> ok, lines[-1]  # doctest: +ELLIPSIS
        (True, 'store: 6 images; every vector, token set and payload is intact ...')
    """
    folder = job.store.expanduser()
    lines: list[str] = []
    report = check_store(folder)
    if any(f.kind == "identity" for f in report.findings):
        record.restore_identity(folder)
        lines.append(f"Restored {folder / META_FILE} from {BACKUP_FILE}.")
        report = check_store(folder)
    if report.ok:
        return [*lines, report.line()], True
    if report.info is None or any(f.kind == "shard" for f in report.findings):
        raise DamagedStoreError(report.line())
    outcome = rebuild(folder, report, job)
    lines.append(outcome.summary(folder))
    final = check_store(folder)
    lines.append(final.line())
    return lines, final.ok


def rebuild(folder: Path, report: CheckReport, job: RepairJob) -> RepairOutcome:
    """Build the collection again in ``folder/.repaired`` and swap it in (see above)."""
    started = time.perf_counter()
    assert report.info is not None
    _room_to_rebuild(folder)
    rebuilt = folder / REPAIRED_DIR
    shutil.rmtree(rebuilt, ignore_errors=True)
    outcome = RepairOutcome()
    damaged = report.damaged_ids()
    wanted = set(report.lost_ids) | set(report.unreadable_ids)
    if report.recorded is not None and not report.lost_ids:
        outcome.unnamed_lost = max(0, report.recorded[0] - report.points)
    embedder = _LazyEmbedder(report.info, job.device, folder)
    with EdgeStore.open(folder, warn=False) as old, EdgeStore.open(rebuilt, report.info) as new:
        known: dict[str, tuple[int, int]] = {}  # path -> (size, mtime_ns) of intact points
        folders: set[str] = set()
        for ids in old.id_pages():
            intact = [i for i in ids if i not in damaged]
            stored = old.stored(intact, ["image"])
            tokens = old.get_tokens(intact)
            records = []
            for point_id in intact:
                payload, vectors = stored[point_id]
                public = {k: v for k, v in payload.items() if k not in PRIVATE_KEYS}
                records.append(PointRecord(point_id, np.asarray(vectors["image"], np.float32),
                                           tokens.get(point_id), cast(ImagePayload, public)))
                _note_files(public, known, folders)
            new.upsert(records)
            outcome.kept += len(records)
            readable = _readable(old, [i for i in ids if i in damaged and i not in wanted])
            for payload, _ in readable.values():
                _note_files(payload, {}, folders)
            _reembed(new, readable, embedder, outcome, job.batch_size)
        outcome.folders = sorted(_outermost(folders))
        _find_again(new, wanted, known, outcome, embedder, job.batch_size)
    record.mark_ready(rebuilt)
    _swap(folder)
    outcome.seconds = time.perf_counter() - started
    return outcome


class _LazyEmbedder:
    """The collection's model, loaded on first use (a rebuild that only copies needs none)."""

    def __init__(self, info: CollectionInfo, device: str | None, folder: Path) -> None:
        self.info, self.device, self.folder = info, device, folder
        self._embedder: ImageEmbedder | None = None

    def get(self) -> ImageEmbedder:
        if self._embedder is None:
            from twinrank.models import create_model
            from twinrank.models.encode import ImageEmbedder

            model = create_model(self.info.model_source, pretrained=self.info.model_pretrained,
                                 device=self.device)
            check_info(self.info, replace(self.info, model_id=model.model_id), str(self.folder))
            self._embedder = ImageEmbedder(model)
        return self._embedder


def _reembed(new: EdgeStore, damaged: dict[str, tuple[dict[str, Any], dict[str, Any]]],
             embedder: _LazyEmbedder, outcome: RepairOutcome, batch_size: int) -> None:
    """Re-embed damaged points from the first of their files with the same content."""
    jobs = []
    for point_id, (payload, _) in damaged.items():
        public = {k: v for k, v in payload.items() if k not in PRIVATE_KEYS}
        source = next((p for p in public.get("paths", []) if _same_content(p, point_id)), None)
        if source is None:
            outcome.dropped += 1
            continue
        jobs.append((point_id, Path(source), public))
    for batch in _batches(jobs, batch_size):
        made = _embed(embedder.get(), [path for _, path, _ in batch], new.info.token_count > 0)
        new.upsert([make_record(point_id, vector, tokens, payload)
                    for (point_id, _, payload), (vector, tokens, _) in zip(batch, made,
                                                                           strict=True)])
        outcome.reembedded += len(batch)


def _find_again(new: EdgeStore, wanted: set[str], known: dict[str, tuple[int, int]],
                outcome: RepairOutcome, embedder: _LazyEmbedder, batch_size: int) -> None:
    """Walk the collection's folders for the files of ``wanted`` ids, reading only files
    the store does not already know, and write them with payloads made from their files."""
    if not wanted:
        return
    found: dict[str, list[FileFacts]] = {}
    for root in outcome.folders:
        for path in iter_image_files(root):
            try:
                info = path.stat()
                if known.get(path.as_posix()) == (info.st_size, info.st_mtime_ns):
                    continue
                _, digest = read_hashed(path)
            except (OSError, ImageReadError):
                continue
            point_id = point_id_for(digest)
            if point_id in wanted:
                found.setdefault(point_id, []).append(
                    FileFacts(Path(os.path.abspath(path)), info.st_size, info.st_mtime_ns,
                              digest))
    outcome.not_found = len(wanted - set(found))
    for batch in _batches(list(found.items()), batch_size):
        made = _embed(embedder.get(), [facts[0].path for _, facts in batch],
                      new.info.token_count > 0)
        records = []
        for (point_id, facts), (vector, tokens, decoded) in zip(batch, made, strict=True):
            payload = build_payload(facts[0], decoded)
            for other in facts[1:]:
                payload = add_path(payload, other)
            records.append(make_record(point_id, vector, tokens, payload))
        new.upsert(records)
        outcome.found_again += len(batch)


def _embed(embedder: ImageEmbedder, paths: list[Path], with_tokens: bool,
           ) -> list[tuple[np.ndarray, np.ndarray | None, Any]]:
    """(vector, tokens or None, decoded image facts) per file."""
    decoded = [decode_image(read_hashed(path)[0], embedder.target_size) for path in paths]
    vectors, tokens = embedder.embed_arrays([embedder.prepare(d.image) for d in decoded])
    return [(vectors[i], tokens[i] if with_tokens else None, decoded[i])
            for i in range(len(paths))]


def _readable(store: EdgeStore, ids: list[str]) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """The payloads of these points that Qdrant can read (one by one if a page fails)."""
    try:
        return store.stored(ids)
    except Exception:  # noqa: BLE001  (a damaged file: try each point)
        found = {}
        for point_id in ids:
            try:
                found.update(store.stored([point_id]))
            except Exception:  # noqa: BLE001  (unreadable: neither kept nor re-embedded)
                continue
        return found


def _same_content(path: str, point_id: str) -> bool:
    try:
        return point_id_for(read_hashed(path)[1]) == point_id
    except (OSError, ImageReadError):
        return False


def _note_files(payload: dict[str, Any], known: dict[str, tuple[int, int]],
                folders: set[str]) -> None:
    for path, facts in (payload.get("files") or {}).items():
        if isinstance(facts, dict):
            known[path] = (int(facts.get("size", -1)), int(facts.get("mtime_ns", -1)))
    for path in payload.get("paths") or []:
        folders.add(os.path.dirname(path))


def _outermost(folders: set[str]) -> list[str]:
    """The folders that are not inside another of them."""
    chosen: list[str] = []
    for folder in sorted(folders):
        if not any(folder == c or folder.startswith(c.rstrip("/") + "/") for c in chosen):
            chosen.append(folder)
    return [c for c in chosen if os.path.isdir(c)]


def _batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _room_to_rebuild(folder: Path) -> None:
    """The rebuilt copy takes about what the shard and the token file hold now."""
    tokens = folder / TOKENS_FILE
    held = space.shard_bytes(folder / SHARD_DIR) + (
        tokens.stat().st_blocks * 512 if tokens.exists() else 0)
    needed = held + space.CREATE_BYTES[space.fills_holes(folder)] + space.RESERVE
    fits, free = space.needs_space(folder, needed)
    if not fits:
        raise DiskFullError(
            f"The disk holding the store {folder} has {space.human(free)} free; rebuilding it "
            f"needs about {space.human(needed)} beside it. Nothing was changed: free some "
            f"space, then run the repair again.", needed, free, folder=folder)


def _swap(folder: Path) -> None:
    """Put the rebuilt collection in place, holding the lock every process opens under."""
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StoreBusyError(
                        f"The store at {folder} is in use by another process, so the "
                        f"rebuilt collection (ready in {folder / REPAIRED_DIR}) was not "
                        f"swapped in; it will be when the store is next opened.") from None
                time.sleep(0.1)
        record.finish_swap(folder)
        record.write_damage(folder, None)
    finally:
        os.close(fd)

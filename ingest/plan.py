"""Before any file is read: what the store already holds, and which files need work.

A file whose path, size and mtime are already in the store is unchanged and is not even
opened. Every other file becomes a ``Candidate``: the workers read and hash it, and its
content hash then decides (in ``runner``) whether it is new, moved, a duplicate or changed.
"""

from __future__ import annotations

import errno
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from twinrank.ingest.report import IngestReport
from twinrank.ingest.walk import WalkLog, WalkOptions, iter_image_files
from twinrank.ingest.write import remove_paths
from twinrank.store import VectorStore
from twinrank.store.filters import ImagePayload


@dataclass(frozen=True)
class KnownFile:
    point_id: str
    size: int
    mtime_ns: int


@dataclass
class StoreIndex:
    """Every file path the store knows, and every point id it holds."""

    files: dict[str, KnownFile] = field(default_factory=dict)
    point_ids: set[str] = field(default_factory=set)

    @classmethod
    def load(cls, store: VectorStore) -> StoreIndex:
        index = cls()
        for point_id, payload in store.iter_payloads():
            index.point_ids.add(point_id)
            for path, facts in payload.get("files", {}).items():
                index.files[path] = KnownFile(
                    point_id, int(facts["size"]), int(facts["mtime_ns"])
                )
        return index


@dataclass(frozen=True)
class Candidate:
    """A file that must be read: new, or its size or mtime changed."""

    path: Path  # absolute
    size: int
    mtime_ns: int
    previous: KnownFile | None  # what the store had at this path, if anything


@dataclass
class Plan:
    candidates: list[Candidate] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)  # every image path the walk found
    unread: list[str] = field(default_factory=list)  # folders the walk could not list


def plan_run(
    root: Path, options: WalkOptions, index: StoreIndex, report: IngestReport
) -> Plan:
    """Walk ``root`` and stat every image; count the unchanged ones, list the rest.

    The folders the walk could not list or would not enter go to ``report``."""
    plan = Plan()
    log = WalkLog()
    for found in iter_image_files(root, options=options, log=log):
        path = Path(os.path.abspath(found))
        key = path.as_posix()
        if key in plan.seen:
            continue
        plan.seen.add(key)
        try:
            info = path.stat()
        except OSError as error:  # a dangling link or a vanished file: the worker says why
            if error.errno == errno.ENAMETOOLONG:  # never readable: say so, load no model
                report.fail(key, f"its path ({len(os.fsencode(key)):,} bytes) is longer than "
                                 f"this system allows; shorten a folder or file name")
                continue
            plan.candidates.append(Candidate(path, -1, -1, index.files.get(key)))
            continue
        known = index.files.get(key)
        if known and known.size == info.st_size and known.mtime_ns == info.st_mtime_ns:
            report.unchanged += 1
            continue
        plan.candidates.append(Candidate(path, info.st_size, info.st_mtime_ns, known))
    for folder, reason in log.unread:
        plan.unread.append(os.path.abspath(folder))
        report.skip_folder(folder, reason + ("; the images stored from it are kept, even by "
                                             "--prune" if index.files else ""))
    for folder, reason in log.refused:
        report.skip_folder(folder, reason)
    return plan


def prune_gone(
    root: Path, plan: Plan, index: StoreIndex, store: VectorStore, report: IngestReport
) -> None:
    """Forget paths under ``root`` whose files are gone; delete points left with none.

    Only paths under the ingested folder are considered, and only files that no longer
    exist (an excluded or hidden file that still exists is kept). A file counts as gone
    only when the system says it does not exist: one it cannot look at (no permission, a
    path too long), or one under a folder the walk could not list, is kept. When the walk
    found no image at all but the store has some under ``root``, nothing is pruned: that
    is what an unmounted drive looks like.
    """
    under_root = _stored_under(root, index)
    if under_root and not plan.seen:
        report.notes.append(
            f"Not pruning: no images found under {root}, but the store has {len(under_root)}. "
            f"Is the drive mounted? Run again with --prune once it is."
        )
        return
    gone = _still_stored(_gone_paths(under_root, plan, index), store)
    doomed: list[str] = []
    for point_id, (payload, paths) in gone.items():
        remaining = remove_paths(payload, paths)
        report.pruned += len(paths)
        if remaining is None:
            doomed.append(point_id)
        else:
            store.set_payload(point_id, remaining)
            report.payloads_rewritten += 1
    store.delete(doomed)


def note_gone(
    root: Path, plan: Plan, index: StoreIndex, store: VectorStore, report: IngestReport
) -> None:
    """Without ``--prune``: say how many stored files under ``root`` are gone from disk
    (searches still return them) and how to forget them. Silent when the walk found no
    image at all (an unmounted drive: nothing is gone)."""
    if not plan.seen:
        return
    gone = _still_stored(_gone_paths(_stored_under(root, index), plan, index), store)
    count = sum(len(paths) for _, paths in gone.values())
    if count:
        report.gone = count
        report.notes.append(
            f"{count} stored file{'s' if count > 1 else ''} under {root} "
            f"{'are' if count > 1 else 'is'} gone from disk but still searchable; run "
            f"again with --prune to forget {'them' if count > 1 else 'it'}.")


def _stored_under(root: Path, index: StoreIndex) -> list[str]:
    prefix = root.as_posix().rstrip("/") + "/"
    return [p for p in index.files if p.startswith(prefix) or p == root.as_posix()]


def _gone_paths(paths: list[str], plan: Plan, index: StoreIndex) -> dict[str, set[str]]:
    """Point id -> its ``paths`` the walk did not find and the system says do not exist."""
    unread = [folder.rstrip("/") + "/" for folder in plan.unread]
    gone: dict[str, set[str]] = defaultdict(set)
    for path in paths:
        if path in plan.seen or any(path.startswith(folder) for folder in unread):
            continue
        if _does_not_exist(path):
            gone[index.files[path].point_id].add(path)
    return gone


def _still_stored(
    gone: dict[str, set[str]], store: VectorStore
) -> dict[str, tuple[ImagePayload, set[str]]]:
    """The gone paths the store still records (this run may have moved some), by point."""
    if not gone:
        return {}
    payloads = store.get_payloads(list(gone))
    kept: dict[str, tuple[ImagePayload, set[str]]] = {}
    for point_id, paths in gone.items():
        payload = payloads.get(point_id)
        stored = paths & set(payload.get("files", {})) if payload is not None else set()
        if payload is not None and stored:
            kept[point_id] = (payload, stored)
    return kept


def _does_not_exist(path: str) -> bool:
    """True only when the system says so: not when it cannot look (no permission, a name
    too long), which is what a folder locked for this user looks like."""
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False
    return False

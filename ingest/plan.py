"""Before any file is read: what the store already holds, and which files need work.

A file whose path, size and mtime are already in the store is unchanged and is not even
opened. Every other file becomes a ``Candidate``: the workers read and hash it, and its
content hash then decides (in ``runner``) whether it is new, moved, a duplicate or changed.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from twinrank.ingest.report import IngestReport
from twinrank.ingest.walk import WalkOptions, iter_image_files
from twinrank.ingest.write import remove_paths
from twinrank.store import VectorStore


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


def plan_run(
    root: Path, options: WalkOptions, index: StoreIndex, report: IngestReport
) -> Plan:
    """Walk ``root`` and stat every image; count the unchanged ones, list the rest."""
    plan = Plan()
    for found in iter_image_files(root, options=options):
        path = Path(os.path.abspath(found))
        key = path.as_posix()
        if key in plan.seen:
            continue
        plan.seen.add(key)
        try:
            info = path.stat()
        except OSError:  # a dangling link or a vanished file: the worker reports why
            plan.candidates.append(Candidate(path, -1, -1, index.files.get(key)))
            continue
        known = index.files.get(key)
        if known and known.size == info.st_size and known.mtime_ns == info.st_mtime_ns:
            report.unchanged += 1
            continue
        plan.candidates.append(Candidate(path, info.st_size, info.st_mtime_ns, known))
    return plan


def prune_gone(
    root: Path, plan: Plan, index: StoreIndex, store: VectorStore, report: IngestReport
) -> None:
    """Forget paths under ``root`` whose files are gone; delete points left with none.

    Only paths under the ingested folder are considered, and only files that no longer
    exist (an excluded or hidden file that still exists is kept). When the walk found no
    image at all but the store has some under ``root``, nothing is pruned: that is what
    an unmounted drive looks like.
    """
    prefix = root.as_posix().rstrip("/") + "/"
    under_root = [p for p in index.files if p.startswith(prefix) or p == root.as_posix()]
    if under_root and not plan.seen:
        report.notes.append(
            f"Not pruning: no images found under {root}, but the store has {len(under_root)}. "
            f"Is the drive mounted? Run again with --prune once it is."
        )
        return
    gone: dict[str, set[str]] = defaultdict(set)
    for path in under_root:
        if path not in plan.seen and not os.path.lexists(path):
            gone[index.files[path].point_id].add(path)
    if not gone:
        return
    payloads = store.get_payloads(list(gone))
    doomed: list[str] = []
    for point_id, paths in gone.items():
        payload = payloads.get(point_id)
        if payload is None:
            continue
        remaining = remove_paths(payload, paths)
        report.pruned += len(paths & set(payload.get("files", {})))
        if remaining is None:
            doomed.append(point_id)
        else:
            store.set_payload(point_id, remaining)
            report.payloads_rewritten += 1
    store.delete(doomed)

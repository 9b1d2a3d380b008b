"""``twinrank check``: verify an embedded collection against what twinrank recorded.

Like SQLite's ``integrity_check`` or ``git fsck``, and read-only. What is compared:

- the identity ``twinrank.json`` (every field's type, ``store.record``), else its backup;
- the point count against ``points.json`` (a truncated Qdrant id tracker loses points
  silently: 47 of 600 were left, searched without a word);
- every point: its ``image`` vector present (flipped deleted flags hide it) and equal to
  the CRC-32 written with it (``edge.VECTOR_CRC``: flipped bytes in the vector storage
  change answers silently); its ``centred`` copy within a cosine of 0.98 of what it is
  derived from (it is float16, and rewritten only when the mean moves 0.05, so no exact
  checksum: a flipped exponent or sign shows, a flipped low mantissa bit does not); its
  payload readable with its paths and content hash; its tokens' record in ``tokens.bin``
  tagged with its id and equal to the CRC-32 written with it (``store.tokens``);
- Qdrant's own errors reading any of it (a truncated vector or payload file): caught per
  point, and the file named when its size is not the one Qdrant gave it.

Points written before checksums existed are counted as unverified, not as damaged. The
check writes nothing but ``damage.json``: its one line while damage is found, which every
open of the store then prints as a warning, until a check (or a repair) finds none.
``CheckReport.line()`` says in one line what is wrong, in which file, and the repair
(``twinrank check STORE --repair``, ``ingest.repair``). Ids of points Qdrant lost are
known when the collection keeps tokens: ``tokens.bin`` still has records tagged with them.

Example:
    >>> print(check_store(Path("store")).line())  # doctest: +ELLIPSIS
    store: 6 images; every vector, token set and payload is intact ...
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from twinrank.store.edge import PRIVATE_KEYS, SHARD_DIR, VECTOR_CRC, EdgeStore, vector_crc
from twinrank.store.record import (
    BACKUP_FILE,
    META_FILE,
    POINTS_FILE,
    DamagedStoreError,
    parse_identity,
    read_identity,
    read_points,
    shard_files,
    write_damage,
)
from twinrank.store.schema import (
    CENTRED_VECTOR,
    IMAGE_VECTOR,
    TOKENS_IN_FILE,
    CollectionInfo,
    StoreError,
    centre,
)
from twinrank.store.tokens import TOKEN_SLOT, TOKENS_FILE

PAGE = 256  # points read per request; a page Qdrant fails on is read point by point
CENTRED_MIN_COSINE = 0.98


@dataclass
class Finding:
    """One kind of damage: what (a phrase with its count), where (a path in the store),
    and the ids of the points it hit (for the repair)."""

    kind: str  # identity, shard, count, vector, centred, payload, tokens, token_file
    what: str
    where: str
    ids: set[str] = field(default_factory=set)


@dataclass
class CheckReport:
    """What ``check_store`` found; ``line()`` for a person, the rest for ``--repair``."""

    folder: Path
    points: int = 0
    recorded: tuple[int, int] | None = None
    findings: list[Finding] = field(default_factory=list)
    unverified: int = 0  # points written before checksums existed
    lost_ids: set[str] = field(default_factory=set)  # tagged in tokens.bin, no point
    unreadable_ids: set[str] = field(default_factory=set)  # no readable payload
    info: CollectionInfo | None = None  # the identity (or its backup's) the check used

    @property
    def ok(self) -> bool:
        return not self.findings

    def damaged_ids(self) -> set[str]:
        """Points that are there but damaged (re-embedded, or dropped, by a repair)."""
        return set().union(*(f.ids for f in self.findings)) - self.lost_ids

    def line(self) -> str:
        """One line: intact, or what is wrong where, and how to repair it."""
        name = str(self.folder)
        if self.ok:
            unverified = (f" ({self.unverified:,} written before twinrank kept checksums "
                          f"were read, not verified)" if self.unverified else "")
            return (f"{name}: {self.points:,} images; every vector, token set and payload "
                    f"is intact against the checksums written at ingest, the count matches "
                    f"{POINTS_FILE} and {META_FILE} is valid{unverified}.")
        found = "; ".join(f"{f.what} ({f.where})" for f in self.findings)
        return f"{name} is damaged: {found}. {self.repair_hint()}"

    def repair_hint(self) -> str:
        kinds = {f.kind for f in self.findings}
        if kinds == {"identity"}:
            return (f"Run `twinrank check {self.folder} --repair` to restore {META_FILE} "
                    f"from {BACKUP_FILE}." if self.info is not None else
                    "It has no valid backup: ingest your folders again into a new --store.")
        if self.info is None or "shard" in kinds:
            return "Ingest your folders again into a new --store."
        return (f"Run `twinrank check {self.folder} --repair` to rebuild it: intact images "
                f"are kept, damaged and lost ones re-embedded from their files (those whose "
                f"files are gone are dropped).")


def check_store(folder: str | Path) -> CheckReport:
    """Check the embedded collection at ``folder`` (see the module notes); read-only.

    Raises ``StoreError`` only when there is no collection there.
    """
    folder = Path(folder).expanduser()
    report = CheckReport(folder)
    if not (folder / META_FILE).is_file():
        raise StoreError(f"No twinrank collection at {folder} ({META_FILE} is missing). "
                         f"Pass the folder `twinrank ingest --store` made.")
    try:
        report.info = read_identity(folder)
    except DamagedStoreError as error:  # the rest is checked once it is restored
        reason = str(error).split(" is damaged (", 1)[-1].split("). ", 1)[0]
        report.findings.append(Finding("identity", f"its record is damaged ({reason}); the "
                                       f"rest is checked once it is restored", META_FILE))
        report.info = _backup(folder)
        return report
    if report.info is None:
        return report
    try:
        store = EdgeStore.open(folder, warn=False)
    except StoreError as error:
        report.findings.append(Finding("shard", f"Qdrant cannot open it: {error}", SHARD_DIR))
        return report
    with store:
        _check_points(store, report)
        if not store.read_only:  # every open says it until a check finds none
            with contextlib.suppress(OSError):
                write_damage(folder, None if report.ok else report.line())
    return report


def _backup(folder: Path) -> CollectionInfo | None:
    try:
        return parse_identity((folder / BACKUP_FILE).read_bytes())
    except (OSError, ValueError):
        return None


def _check_points(store: EdgeStore, report: CheckReport) -> None:
    info = store.info
    report.points = store.count()
    report.recorded = read_points(store.folder)
    found: dict[str, set[str]] = {}  # kind -> ids
    slots: dict[str, int] = {}
    seen: set[str] = set()
    try:
        pages = list(store.id_pages())
    except Exception as error:  # noqa: BLE001  (Qdrant's message, reported)
        report.findings.append(Finding("shard", f"Qdrant cannot list its points ({error})",
                                       shard_files(store.folder, "mutable_id_tracker.*")))
        return
    vectors = [IMAGE_VECTOR] + ([CENTRED_VECTOR] if info.centred and info.image_mean else [])
    for ids in pages:
        seen.update(ids)
        for start in range(0, len(ids), PAGE):
            for point_id, problem, stored in _read(store, ids[start:start + PAGE], vectors):
                if problem:
                    found.setdefault(problem, set()).add(point_id)
                    continue
                payload, named = stored
                for kind in _point_problems(payload, named, info, report):
                    found.setdefault(kind, set()).add(point_id)
                if isinstance(payload.get(TOKEN_SLOT), int):
                    slots[point_id] = int(payload[TOKEN_SLOT])
                elif info.token_count > 0 and info.token_layout == TOKENS_IN_FILE:
                    found.setdefault("no_tokens", set()).add(point_id)
    _check_tokens(store, slots, seen, found, report)
    _check_count(store, report)
    _add_findings(store.folder, found, report)


def _read(store: EdgeStore, ids: list[str], vectors: list[str],
          ) -> Iterator[tuple[str, str, tuple[dict[str, Any], dict[str, Any]]]]:
    """(id, problem, (payload, vectors)) per point; a page Qdrant fails on is read point by
    point, and each failing point part by part, to say which storage failed."""
    try:
        stored = store.stored(ids, vectors)
    except Exception:  # noqa: BLE001  (Qdrant's error: find the points and the part)
        if len(ids) > 1:
            middle = len(ids) // 2
            yield from _read(store, ids[:middle], vectors)
            yield from _read(store, ids[middle:], vectors)
            return
        yield ids[0], _failing_part(store, ids[0], vectors), ({}, {})
        return
    for point_id in ids:
        yield point_id, "", stored.get(point_id, ({}, {}))


def _failing_part(store: EdgeStore, point_id: str, vectors: list[str]) -> str:
    for kind, payload, named in (("payload_unreadable", True, []),
                                 *((f"{name}_unreadable", False, [name]) for name in vectors)):
        try:
            store.stored([point_id], named, payload=payload)
        except Exception:  # noqa: BLE001
            return kind
    return "payload_unreadable"


def _point_problems(payload: dict[str, Any], named: dict[str, Any], info: CollectionInfo,
                    report: CheckReport) -> list[str]:
    problems = []
    image = named.get(IMAGE_VECTOR)
    if image is None:
        problems.append("no_vector")
    elif not isinstance(payload.get(VECTOR_CRC), int):
        report.unverified += 1
    elif vector_crc(image) != payload[VECTOR_CRC]:
        problems.append("vector")
    centred = named.get(CENTRED_VECTOR)
    if image is not None and info.image_mean is not None and info.centred:
        if centred is None or not _centred_matches(image, centred, info.image_mean):
            problems.append("centred")
    paths = payload.get("paths")
    if not (isinstance(paths, list) and paths and all(isinstance(p, str) for p in paths)
            and isinstance(payload.get("content_hash"), str)
            and isinstance(payload.get("files"), dict)):
        problems.append("payload")
    return problems


def _centred_matches(image: Any, centred: Any, mean: tuple[float, ...]) -> bool:
    expected = centre(np.asarray(image, dtype=np.float32), mean)
    stored = np.asarray(centred, dtype=np.float32)
    if not np.all(np.isfinite(stored)):
        return False
    norm = float(np.linalg.norm(stored))
    if not math.isfinite(norm) or norm == 0:
        return False
    return float(expected @ stored) / norm >= CENTRED_MIN_COSINE


def _check_tokens(store: EdgeStore, slots: dict[str, int], seen: set[str],
                  found: dict[str, set[str]], report: CheckReport) -> None:
    tokens = store.token_file
    if tokens is None:
        return
    try:
        for point_id, problem in tokens.verify(slots).items():
            found.setdefault(f"tokens_{problem}", set()).add(point_id)
        tagged = tokens.tags()
    except StoreError as error:  # its header is damaged
        report.findings.append(Finding("token_file", str(error).split(" (")[0].replace(
            f"The token file {tokens.path}", "the token file"), TOKENS_FILE, set(slots)))
        return
    report.lost_ids = {point_id for slot, point_id in tagged.items()
                       if point_id not in seen}


def _check_count(store: EdgeStore, report: CheckReport) -> None:
    recorded = report.recorded
    if recorded is None or recorded[0] <= report.points <= recorded[1]:
        return
    expected = f"{recorded[0]:,}" if recorded[0] == recorded[1] else \
        f"{recorded[0]:,}-{recorded[1]:,}"
    lost = f", {len(report.lost_ids):,} of them known by id" if report.lost_ids else ""
    what = (f"Qdrant holds {report.points:,} images where twinrank recorded {expected} in "
            f"{POINTS_FILE}{lost}")
    report.findings.append(Finding("count", what, shard_files(
        store.folder, "mutable_id_tracker.mappings"), set(report.lost_ids)))


PHRASES = {  # kind -> (finding kind, what is wrong with that many images, where)
    "no_vector": ("vector", "{n} images have lost their image vector",
                  "vector_storage-image/deleted/flags_*.dat"),
    "vector": ("vector", "{n} image vectors do not match their checksums",
               "vector_storage-image/vectors/chunk_*"),
    "image_unreadable": ("vector", "{n} image vectors cannot be read",
                         "vector_storage-image/vectors/chunk_*"),
    "centred": ("centred", "{n} centred vectors do not match their image vectors",
                "vector_storage-centred/vectors/chunk_*"),
    "centred_unreadable": ("centred", "{n} centred vectors cannot be read",
                           "vector_storage-centred/vectors/chunk_*"),
    "payload": ("payload", "{n} payloads lack their paths", "payload_storage/page_*"),
    "payload_unreadable": ("payload", "{n} payloads cannot be read", "payload_storage/page_*"),
    "tokens_missing": ("tokens", "{n} images' cached tokens are missing", TOKENS_FILE),
    "tokens_damaged": ("tokens", "{n} images' cached tokens do not match their checksums",
                       TOKENS_FILE),
    "no_tokens": ("tokens", "{n} images name no cached tokens", "payload_storage/page_*"),
}


def _add_findings(folder: Path, found: dict[str, set[str]], report: CheckReport) -> None:
    for key, ids in found.items():
        kind, what, where = PHRASES[key]
        if where != TOKENS_FILE:
            where = shard_files(folder, where)
        report.findings.append(Finding(kind, what.format(n=f"{len(ids):,}"), where, ids))
        if key == "payload_unreadable":
            report.unreadable_ids |= ids


__all__ = ["PRIVATE_KEYS", "CheckReport", "Finding", "check_store"]

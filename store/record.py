"""What twinrank records beside an embedded collection, to tell damage from a healthy store.

- ``twinrank.json``, the collection's identity (``CollectionInfo``), is read here and
  checked field by field: a malformed one is one sentence naming the file, never a
  traceback. Every write of it also writes ``twinrank.backup.json``, from which
  ``twinrank check --repair`` restores it.
- ``points.json``, the point count: ``{"low": L, "high": H}``. Before each write the store
  widens it to what the write may leave (an upsert of N images: up to N more; a delete of
  N: up to N fewer), and narrows it to the exact count after. So a write killed at any
  instant leaves the true count inside the range, while a shard that lost points (a
  truncated id tracker) or gained some falls outside it, and opening the store says so.
- ``.repaired/``, a rebuilt collection ``twinrank check --repair`` swaps in file by file;
  an interrupted swap is finished on the next open (``finish_swap``).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

from twinrank.store.schema import CollectionInfo, StoreError

META_FILE = "twinrank.json"
BACKUP_FILE = "twinrank.backup.json"
POINTS_FILE = "points.json"
DAMAGE_FILE = "damage.json"  # what the last ``twinrank check`` found, until it finds none
REPAIRED_DIR = ".repaired"
SWAP_READY = "complete"  # in REPAIRED_DIR once the rebuilt collection is whole
# What a repair replaces, in this order; the identity last, so a half-done swap is found
# by the ready marker, not by a new identity on an old shard.
SWAPPED = ("shard", "tokens.bin", "tokens.free", "tokens.intent", POINTS_FILE, BACKUP_FILE,
           META_FILE)
REQUIRED: dict[str, type] = {"model_id": str, "vector_size": int, "token_count": int,
                             "token_width": int}
OPTIONAL: dict[str, type | tuple[type, ...]] = {
    "token_dtype": str, "schema_version": int, "model_source": str,
    "model_pretrained": (str, type(None)), "text_mean": (list, type(None)),
    "image_mean": (list, type(None)), "image_mean_points": int, "text_ef": (int, type(None)),
    "text_plan_points": int, "folder_formats": bool, "token_layout": str}


class DamagedStoreError(StoreError):
    """A file of an embedded collection is damaged; the message names it and the repair."""


def read_identity(folder: Path) -> CollectionInfo | None:
    """The identity recorded in ``folder/twinrank.json``, None when there is none.

    Raises ``DamagedStoreError`` naming the file when it cannot be read as one.

    Example:
        >>> read_identity(Path("store")).model_id
        'twinrank-tiny:random:0'
    """
    meta = Path(folder).expanduser() / META_FILE
    if not meta.is_file():
        return None
    try:
        return parse_identity(meta.read_bytes())
    except (ValueError, OSError) as error:
        repair = (f"Run `twinrank check {folder} --repair` to restore it from its backup "
                  f"({BACKUP_FILE})" if _backup_valid(meta.parent) else
                  "It has no valid backup: ingest your folders again into a new --store")
        raise DamagedStoreError(f"The collection record {meta} is damaged ({error}). "
                                f"{repair}.") from None


def parse_identity(data: bytes) -> CollectionInfo:
    """A ``CollectionInfo`` from the bytes of a ``twinrank.json``; ``ValueError`` saying
    what is wrong otherwise."""
    try:
        found = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError("not text") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"not JSON: {error.msg} at byte {error.pos}") from None
    if not isinstance(found, dict):
        raise ValueError(f"a JSON {type(found).__name__}, not an object")
    for key, kind in REQUIRED.items():
        if key not in found:
            raise ValueError(f"{key} is missing")
        if not isinstance(found[key], kind) or isinstance(found[key], bool):
            wanted = "text" if kind is str else "a whole number"
            raise ValueError(f"{key} is {found[key]!r}, not {wanted}")
    for key, kinds in OPTIONAL.items():
        if key in found and not isinstance(found[key], kinds):
            raise ValueError(f"{key} is {found[key]!r}")
    if found["vector_size"] <= 0 or found["token_count"] < 0 or found["token_width"] < 0:
        raise ValueError("its sizes are out of range")
    for key in ("text_mean", "image_mean"):
        value = found.get(key)
        if value is not None and (len(value) != found["vector_size"] or not all(
                isinstance(x, int | float) and not isinstance(x, bool) for x in value)):
            raise ValueError(f"{key} is not {found['vector_size']} numbers")
    return CollectionInfo.from_dict(found)


def write_identity(folder: Path, info: CollectionInfo) -> None:
    """Write ``twinrank.json`` and its backup, each replaced whole (never half-written)."""
    text = json.dumps(asdict(info), indent=2)
    for name in (BACKUP_FILE, META_FILE):
        staged = folder / (name + ".tmp")
        staged.write_text(text)
        os.replace(staged, folder / name)


def restore_identity(folder: Path) -> CollectionInfo:
    """Put the backup in place of a damaged ``twinrank.json``; ``DamagedStoreError`` when
    there is no valid backup."""
    backup = folder / BACKUP_FILE
    try:
        info = parse_identity(backup.read_bytes())
    except (ValueError, OSError) as error:
        raise DamagedStoreError(f"The collection record {folder / META_FILE} is damaged and "
                                f"so is its backup {backup} ({error}). Ingest your folders "
                                f"again into a new --store.") from None
    write_identity(folder, info)
    return info


def _backup_valid(folder: Path) -> bool:
    try:
        parse_identity((folder / BACKUP_FILE).read_bytes())
    except (ValueError, OSError):
        return False
    return True


def read_points(folder: Path) -> tuple[int, int] | None:
    """The recorded (low, high) point count, None when none was recorded (or unreadable)."""
    try:
        found = json.loads((folder / POINTS_FILE).read_text())
        return int(found["low"]), int(found["high"])
    except (OSError, ValueError, TypeError, KeyError):
        return None


def write_points(folder: Path, low: int, high: int) -> None:
    """Record that the collection holds between ``low`` and ``high`` points."""
    staged = folder / (POINTS_FILE + ".tmp")
    staged.write_text(json.dumps({"low": int(low), "high": int(high)}))
    os.replace(staged, folder / POINTS_FILE)


def count_warning(folder: Path, points: int, with_vectors: int) -> str | None:
    """One line when the store is known to be damaged, else None: the last check found
    damage, the shard's ``points`` falls outside the recorded count, or fewer points than
    that have their image vector (``with_vectors``: its deleted flags were flipped)."""
    found = read_damage(folder)
    if found is not None:
        return f"Warning: {found}"
    recorded = read_points(folder)
    repair = f"Run `twinrank check {folder}` to see what is wrong, and `--repair` to fix it."
    if recorded is not None and not recorded[0] <= points <= recorded[1]:
        expected = f"{recorded[0]:,}" if recorded[0] == recorded[1] else \
            f"{recorded[0]:,}-{recorded[1]:,}"
        return (f"Warning: the store at {folder} holds {points:,} images where twinrank "
                f"recorded {expected}: Qdrant's id tracker "
                f"({shard_files(folder, 'mutable_id_tracker.mappings')}) is damaged. {repair}")
    if with_vectors < points:
        return (f"Warning: {points - with_vectors:,} of the {points:,} images in the store at "
                f"{folder} have lost their image vector and cannot be found: "
                f"{shard_files(folder, 'vector_storage-image/deleted/flags_*.dat')} is "
                f"damaged. {repair}")
    return None


def mark_ready(rebuilt: Path) -> None:
    """Declare the rebuilt collection in ``rebuilt`` whole: from now on ``finish_swap``
    puts it in place, however often it is interrupted."""
    present = [name for name in SWAPPED if (rebuilt / name).exists()]
    staged = rebuilt / (SWAP_READY + ".tmp")
    staged.write_text(json.dumps(present))
    os.replace(staged, rebuilt / SWAP_READY)


def finish_swap(folder: Path) -> bool:
    """Put a rebuilt collection (``REPAIRED_DIR``) in place of the old one if it is ready
    (``mark_ready``), file by file, each step safe to repeat; a rebuild that was not ready
    is removed. Returns whether a swap was finished."""
    rebuilt = folder / REPAIRED_DIR
    if not rebuilt.is_dir():
        return False
    try:
        present = set(json.loads((rebuilt / SWAP_READY).read_text()))
    except (OSError, ValueError):
        shutil.rmtree(rebuilt, ignore_errors=True)
        return False
    for name in SWAPPED:
        new, old = rebuilt / name, folder / name
        if name in present and not new.exists():
            continue  # moved already
        _remove(old)
        if name in present:
            os.replace(new, old)
    shutil.rmtree(rebuilt, ignore_errors=True)
    return True


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def shard_files(folder: Path, pattern: str) -> str:
    """The shard's files matching ``pattern`` in every segment, as paths in the store, for
    a person; only those shorter than Qdrant made them (truncated), when any is.

    Example:
        >>> shard_files(Path("store"), "mutable_id_tracker.mappings")  # doctest: +ELLIPSIS
        'shard/segments/.../mutable_id_tracker.mappings'
    """
    matches = sorted((folder / "shard").glob(f"segments/*/{pattern}"))
    chosen = [p for p in matches if _short(p)] or matches
    if not chosen:
        return f"shard/segments/*/{pattern}"
    named = [str(p.relative_to(folder)) for p in chosen[:3]]
    return ", ".join(named) + (f" and {len(chosen) - 3} more" if len(chosen) > 3 else "")


def short_files(folder: Path) -> list[str]:
    """Chunk and page files of the shard shorter than their storage's config says: what a
    truncation leaves, which Qdrant reports only as "out of bounds" when read."""
    found = []
    for pattern in ("chunk_*.mmap", "page_*.dat"):
        for path in sorted((folder / "shard").glob(f"segments/*/**/{pattern}")):
            if _short(path):
                found.append(str(path.relative_to(folder)))
    return found


def _short(path: Path) -> bool:
    """Whether a chunk or page file is shorter than its storage's config says."""
    try:
        config = json.loads((path.parent / "config.json").read_text())
        size = path.stat().st_size
    except (OSError, ValueError):
        return False
    if path.name.startswith("chunk_"):
        return size < int(config.get("chunk_size_bytes", 0))
    if path.name.startswith("page_"):
        return size < int(config.get("page_size_bytes", 0))
    return False


def read_damage(folder: Path) -> str | None:
    """The line the last ``twinrank check`` wrote when it found damage, else None."""
    try:
        line = json.loads((folder / DAMAGE_FILE).read_text())["line"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return str(line)


def write_damage(folder: Path, line: str | None) -> None:
    """Keep (or, with None, clear) what ``twinrank check`` found, for every open to say."""
    path = folder / DAMAGE_FILE
    if line is None:
        path.unlink(missing_ok=True)
        return
    staged = folder / (DAMAGE_FILE + ".tmp")
    staged.write_text(json.dumps({"line": line}))
    os.replace(staged, path)

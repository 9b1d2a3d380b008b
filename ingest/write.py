"""The write stage: build payloads and points, upsert them, keep the store consistent."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from twinrank.ingest.report import IngestReport
from twinrank.store import PointRecord
from twinrank.store.filters import ImagePayload, ancestor_folders, orientation_of
from twinrank.store.space import DiskFullError, human


class IngestDiskFull(DiskFullError):
    """An ingest stopped before a write its store's disk had no room for.

    Its text is one sentence (what the images left need, what is free, that nothing is
    lost, to re-run), then the run's report; the sentence is also the report's last note.

    Example:
        >>> full = DiskFullError("...", 5_000_000, 1_000_000, 20_000, Path("photos.twinrank"))
        >>> print(IngestDiskFull(full, IngestReport(added=96), left=504))  # doctest: +ELLIPSIS
        The disk holding the store photos.twinrank has 1.0 MB free; the 504 images left
        need about 10.1 MB (20.0 kB each). Nothing is lost: the 96 images written so far
        are kept. Free some space, then run the same command again to continue.
        added 96, ...
    """

    def __init__(self, full: DiskFullError, report: IngestReport, left: int) -> None:
        needed, sentence = full.needed, str(full.args[0])
        if full.per_image and left > 0:  # what the rest needs, not only the next batch
            needed = max(full.needed, full.per_image * left)
            where = f"the store {full.folder}" if full.folder else "the store"
            written = report.added + report.updated
            sentence = (f"The disk holding {where} has {human(full.free)} free; the {left:,} "
                        f"images left need about {human(needed)} ({human(full.per_image)} "
                        f"each). Nothing is lost: the {written:,} images written so far are "
                        f"kept. Free some space, then run the same command again to "
                        f"continue.")
        super().__init__(sentence, needed, full.free, full.per_image)
        report.notes.append(sentence)
        self.sentence = sentence
        self.report = report

    def __str__(self) -> str:
        return "\n".join([self.sentence, *(line for line in self.report.lines()
                                            if line != self.sentence)])


@dataclass(frozen=True)
class FileFacts:
    """What we know about a file before decoding it."""

    path: Path  # absolute
    size: int
    mtime_ns: int  # integer nanoseconds: floats lose digits on the way through the store
    content_hash: str

    @property
    def mtime(self) -> float:
        return self.mtime_ns / 1e9


@dataclass(frozen=True)
class ImageFacts:
    """What decoding told us about an image (a ``DecodedImage`` has the same fields)."""

    width: int
    height: int
    format: str
    captured_at: str | None


class _HasImageFacts(Protocol):
    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...
    @property
    def format(self) -> str: ...
    @property
    def captured_at(self) -> str | None: ...


def build_payload(facts: FileFacts, decoded: _HasImageFacts) -> ImagePayload:
    """The payload of a new point: its file, image facts, capture time and ingest time."""
    path = facts.path.as_posix()
    captured = decoded.captured_at or time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime(facts.mtime)
    )
    return {
        "paths": [path],
        "folders": ancestor_folders(path),
        "files": {path: {"size": facts.size, "mtime_ns": facts.mtime_ns}},
        "size": facts.size,
        "mtime": facts.mtime,
        "width": decoded.width,
        "height": decoded.height,
        "orientation": orientation_of(decoded.width, decoded.height),
        "format": decoded.format,
        "captured_at": captured,
        "captured_at_source": "exif" if decoded.captured_at else "mtime",
        "content_hash": facts.content_hash,
        "ingested_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def add_path(payload: ImagePayload, facts: FileFacts) -> ImagePayload:
    """The payload of an existing point with one more (or a refreshed) path."""
    path = facts.path.as_posix()
    updated = payload.copy()
    paths = [p for p in updated.get("paths", []) if p != path] + [path]
    files = dict(updated.get("files", {}))
    files[path] = {"size": facts.size, "mtime_ns": facts.mtime_ns}
    updated["paths"] = paths
    updated["files"] = files
    updated["folders"] = sorted({f for p in paths for f in ancestor_folders(p)})
    return updated


def remove_paths(payload: ImagePayload, gone: set[str]) -> ImagePayload | None:
    """The payload without ``gone`` paths, or None when no path is left."""
    paths = [p for p in payload.get("paths", []) if p not in gone]
    if not paths:
        return None
    updated = payload.copy()
    updated["paths"] = paths
    updated["files"] = {p: v for p, v in payload.get("files", {}).items() if p in paths}
    updated["folders"] = sorted({f for p in paths for f in ancestor_folders(p)})
    return updated


def make_record(
    point_id: str, vector: np.ndarray, tokens: np.ndarray | None, payload: ImagePayload
) -> PointRecord:
    return PointRecord(id=point_id, image_vector=vector, image_tokens=tokens, payload=payload)

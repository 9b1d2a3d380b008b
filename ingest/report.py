"""What an ingest run did, for people (``summary``, ``lines``) and for tools (``to_json``)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from twinrank.display import printable


@dataclass
class IngestReport:
    """Counts per outcome, every skipped file with its reason, and where the time went.

    - ``added``: new images, embedded.
    - ``updated``: known paths whose content changed (re-embedded unless the new content
      was already stored).
    - ``unchanged``: same size and mtime as stored, or touched but with the same bytes.
    - ``moved``: content already stored, found at a new path while an old path is gone;
      no model work.
    - ``duplicates``: content already stored (or seen earlier in this run) at another
      path that still exists: recorded as one more path of the same point.
    - ``pruned``: paths whose files are gone, forgotten (``--prune``); a point with no
      path left is deleted.
    - ``failed``: files skipped, each with the reason (never fatal; retried next run).
    - ``skipped_folders``: folders not looked into, each with the reason: unreadable ones
      (their stored images are kept, even by ``--prune``), pseudo-filesystems, link
      loops, twinrank stores.
    - ``gone``: stored files under the folder that no longer exist, left searchable
      because the run had no ``--prune``.
    """

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    moved: int = 0
    duplicates: int = 0
    pruned: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    skipped_folders: list[dict[str, str]] = field(default_factory=list)
    gone: int = 0
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)  # walk, wait, embed, write
    precision: str = ""
    embedded: int = 0  # images that went through the model in this run
    interrupted: bool = False
    # points whose payload was rewritten without new vectors (touched, moved, copied,
    # changed or pruned paths): Qdrant moves each out of its search index, so the run
    # ends with ``build_index``
    payloads_rewritten: int = 0


    def fail(self, path: str, reason: str) -> None:
        self.failed.append({"path": path, "reason": reason})

    def skip_folder(self, path: str, reason: str) -> None:
        self.skipped_folders.append({"path": path, "reason": reason})

    def add_time(self, stage: str, seconds: float) -> None:
        self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + seconds

    def summary(self) -> str:
        rate = self.embedded / self.seconds if self.seconds else 0.0
        return (
            f"added {self.added}, updated {self.updated}, unchanged {self.unchanged}, "
            f"moved {self.moved}, duplicates {self.duplicates}, pruned {self.pruned}, "
            f"failed {len(self.failed)}"
            + (f", folders skipped {len(self.skipped_folders)}" if self.skipped_folders else "")
            + f" in {self.seconds:.1f} s ({rate:.1f} images/s)"
        )

    def lines(self, limit: int = 20) -> list[str]:
        """The summary, then notes, skipped folders and files (at most ``limit`` of each)."""
        out = [self.summary(), *self.notes]
        for folder in self.skipped_folders[:limit]:
            out.append(f"  skipped folder {printable(folder['path'])}: {folder['reason']}")
        if len(self.skipped_folders) > limit:
            out.append(f"  ... and {len(self.skipped_folders) - limit} more folders (write "
                       f"them all with --report)")
        for failure in self.failed[:limit]:
            out.append(f"  skipped {printable(failure['path'])}: {failure['reason']}")
        if len(self.failed) > limit:
            out.append(f"  ... and {len(self.failed) - limit} more (write them all with --report)")
        return out

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        rate = self.embedded / self.seconds if self.seconds else 0.0
        return data | {"images_per_s": round(rate, 2)}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2)

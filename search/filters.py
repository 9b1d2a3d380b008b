"""Payload filters users search by: folder, capture date range, file type, file size.

One ``SearchFilter`` dataclass is the only filter type above the store; each back end
translates it to its own condition objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timezone
from pathlib import PurePosixPath

# payload field -> kind of payload index; every field a filter touches is indexed.
INDEXED_FIELDS: dict[str, str] = {
    "folders": "keyword",
    "format": "keyword",
    "captured_at": "datetime",
    "size": "integer",
}


@dataclass(frozen=True)
class SearchFilter:
    """What to restrict a search to; empty means everything.

    Example:
        >>> SearchFilter(folder="holidays/2021", formats=("jpeg",)).is_empty()
        False
    """

    folder: str | None = None  # a folder relative to the ingested root, or absolute
    after: date | datetime | None = None  # capture time >= this (EXIF, else file mtime)
    before: date | datetime | None = None  # capture time < this
    formats: tuple[str, ...] = field(default_factory=tuple)  # "jpeg", "png", ...
    min_size: int | None = None  # bytes
    max_size: int | None = None

    def is_empty(self) -> bool:
        return self == SearchFilter()

    def normalised_folder(self) -> str | None:
        if not self.folder:
            return None
        return folder_key(self.folder)

    def normalised_formats(self) -> list[str]:
        aliases = {"jpg": "jpeg", "tif": "tiff"}
        return [aliases.get(f.lower().lstrip("."), f.lower().lstrip(".")) for f in self.formats]


def folder_key(folder: str) -> str:
    """The canonical form of a folder used in the ``folders`` payload field."""
    text = str(PurePosixPath(folder.replace("\\", "/"))).rstrip("/")
    return text or "/"


def ancestor_folders(path: str) -> list[str]:
    """Every folder above ``path``, so a folder filter is one exact keyword match.

    Example:
        >>> ancestor_folders("/photos/2021/beach/a.jpg")
        ['/', '/photos', '/photos/2021', '/photos/2021/beach']
    """
    parents = PurePosixPath(path.replace("\\", "/")).parents
    return [folder_key(str(p)) for p in reversed(list(parents)) if str(p) != "."]


def to_rfc3339(moment: date | datetime) -> str:
    if not isinstance(moment, datetime):
        moment = datetime.combine(moment, time.min)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

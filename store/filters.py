"""What a point's payload holds, and the filters users search it by.

The payload stays a JSON dict on the wire (Qdrant stores JSON); ``ImagePayload`` gives its
keys one definition that ingest writes, the store indexes, and search and the app read.
``FILTER_FIELDS`` is the one list of filterable fields: the store creates a payload index
for each, and ``SearchFilter.conditions`` turns a filter into back-end-neutral
``Condition``s, which each back end translates by *kind*, never by field name. So a new
filter is three edits: here (its ``ImagePayload`` key, its ``FilterField``, its
``SearchFilter`` attribute and condition, its ``filter_from_text`` argument), the value
ingest writes (``ingest/write.py``), and its option (``cli.py``). One field is the
store's own: ``folder_formats`` (``indexed_payload``), the folder-and-type pairs that let
a filter on both be one match.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Literal, TypedDict

ConditionKind = Literal["match", "match_any", "range", "time_range"]


class FileEntry(TypedDict):
    """One path's file facts, so a re-run skips files whose size and mtime are unchanged."""

    size: int
    mtime_ns: int


class ImagePayload(TypedDict, total=False):
    """The payload of one image point (one file content, possibly under several paths)."""

    paths: list[str]  # every path this content was found under (POSIX, absolute)
    files: dict[str, FileEntry]  # per path
    folders: list[str]  # every folder above every path: a folder filter is one match
    folder_formats: list[str]  # "<format>:<folder>" per folder, written by the store
    size: int  # bytes
    mtime: float  # seconds, of the first path
    width: int  # pixels, after EXIF orientation
    height: int
    orientation: str  # "landscape", "portrait" or "square", after EXIF orientation
    format: str  # "jpeg", "png", ...
    captured_at: str  # RFC 3339 UTC: EXIF DateTimeOriginal, else the file's mtime
    captured_at_source: str  # "exif" or "mtime"
    content_hash: str  # sha256 of the bytes; the point id derives from it
    ingested_at: str  # RFC 3339 UTC


@dataclass(frozen=True)
class FilterField:
    """A payload field searches filter on: its key, its payload index, its condition kind."""

    key: str
    index: Literal["keyword", "integer", "float", "datetime"]
    kind: ConditionKind


FILTER_FIELDS: tuple[FilterField, ...] = (
    FilterField("folders", "keyword", "match"),
    FilterField("format", "keyword", "match_any"),
    FilterField("folder_formats", "keyword", "match_any"),
    FilterField("captured_at", "datetime", "time_range"),
    FilterField("size", "integer", "range"),
    FilterField("orientation", "keyword", "match"),
)
INDEXED_FIELDS: dict[str, str] = {f.key: f.index for f in FILTER_FIELDS}


@dataclass(frozen=True)
class Condition:
    """One back-end-neutral condition on a payload field.

    ``match``: the field equals ``value``; ``match_any``: it equals one of ``values``;
    ``range``: numbers, ``gte`` <= x <= ``lte``; ``time_range``: RFC 3339 times,
    ``gte`` <= t < ``lt``.
    """

    key: str
    kind: ConditionKind
    value: Any = None
    values: tuple[Any, ...] = ()
    gte: Any = None
    lt: Any = None
    lte: Any = None



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
    orientation: str | None = None  # "landscape", "portrait" or "square"

    def is_empty(self) -> bool:
        return self == SearchFilter()

    def normalised_folder(self) -> str | None:
        if not self.folder:
            return None
        return folder_key(self.folder)

    def normalised_formats(self) -> list[str]:
        aliases = {"jpg": "jpeg", "tif": "tiff"}
        return [aliases.get(f.lower().lstrip("."), f.lower().lstrip(".")) for f in self.formats]

    def conditions(self, paired: bool = False) -> list[Condition]:
        """The filter as back-end-neutral conditions on ``FILTER_FIELDS`` (all must hold):
        the one place a filter attribute meets a payload key. With ``paired`` (the
        collection's points carry ``folder_formats``) a folder and file types become one
        condition on the pairs, which Qdrant answers from one index instead of checking
        each of a folder's points for its type.

        >>> [(c.key, c.kind) for c in SearchFilter(formats=("jpg",), min_size=10).conditions()]
        [('format', 'match'), ('size', 'range')]
        >>> SearchFilter(folder="/a", formats=("jpg", "png")).conditions(paired=True)[0].values
        ('jpeg:/a', 'png:/a')
        """
        found: list[Condition] = []
        folder = self.normalised_folder()
        formats = self.normalised_formats()
        if folder and formats and paired:
            found.append(_one_of("folder_formats", folder_formats([folder], *formats)))
        else:
            if folder:
                found.append(Condition("folders", "match", value=folder))
            if formats:
                found.append(_one_of("format", formats))
        if self.after or self.before:
            found.append(Condition("captured_at", "time_range",
                                   gte=to_rfc3339(self.after) if self.after else None,
                                   lt=to_rfc3339(self.before) if self.before else None))
        if self.min_size is not None or self.max_size is not None:
            found.append(Condition("size", "range", gte=self.min_size, lte=self.max_size))
        if self.orientation:
            found.append(Condition("orientation", "match", value=self.orientation))
        return found


def _one_of(key: str, values: Sequence[str]) -> Condition:
    """``key`` equal to one of ``values``: a plain match for one value, which Qdrant
    Edge selects faster than a match on a list of one (at 1M points, counting the 74,708
    points of one folder and type took 14 ms as a match, 23 ms as a list of one)."""
    if len(values) == 1:
        return Condition(key, "match", value=values[0])
    return Condition(key, "match_any", values=tuple(values))


def folder_key(folder: str) -> str:
    r"""The canonical form of a folder used in the ``folders`` payload field. A backslash is
    part of a name on the systems twinrank runs on, never a separator.

    Example:
        >>> folder_key("/photos/a\\b/")
        '/photos/a\\b'
    """
    text = str(PurePosixPath(folder)).rstrip("/")
    return text or "/"


def ancestor_folders(path: str) -> list[str]:
    """Every folder above ``path``, so a folder filter is one exact keyword match.

    Example:
        >>> ancestor_folders("/photos/2021/beach/a.jpg")
        ['/', '/photos', '/photos/2021', '/photos/2021/beach']
    """
    parents = PurePosixPath(path).parents
    return [folder_key(str(p)) for p in reversed(list(parents)) if str(p) != "."]


def folder_formats(folders: Sequence[str], *formats: str) -> list[str]:
    """The ``folder_formats`` keywords: one per folder and file type, so a filter on both
    is one keyword match instead of a folder's points each checked for their type (at 1M
    points 2.5 times faster to search, ``bench/results/filter_bench_1m.json``).

    Example:
        >>> folder_formats(["/", "/photos"], "jpeg")
        ['jpeg:/', 'jpeg:/photos']
    """
    return [f"{fmt}:{folder}" for fmt in formats for folder in folders]


def indexed_payload(payload: Mapping[str, Any]) -> dict[str, Any]:
    """``payload`` as a store writes it: ``folder_formats`` made from its ``folders`` and
    ``format`` (any given one replaced), so the pairs never disagree with the fields.

    Example:
        >>> indexed_payload({"folders": ["/", "/a"], "format": "png"})["folder_formats"]
        ['png:/', 'png:/a']
    """
    written = {k: v for k, v in payload.items() if k != "folder_formats"}
    if written.get("folders") and written.get("format"):
        written["folder_formats"] = folder_formats(written["folders"], str(written["format"]))
    return written


def to_utc(moment: date | datetime) -> datetime:
    """A date (midnight) or datetime as an aware UTC datetime; naive times are taken as UTC."""
    if not isinstance(moment, datetime):
        moment = datetime.combine(moment, time.min)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def to_rfc3339(moment: date | datetime) -> str:
    return to_utc(moment).strftime("%Y-%m-%dT%H:%M:%SZ")


_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2,
               "mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3}


def parse_size(text: str) -> int:
    """A file size in bytes from ``"2MB"``, ``"500k"``, ``"1.5 MiB"`` or ``"1234"``.

    Example:
        >>> parse_size("2MB"), parse_size("1KiB")
        (2000000, 1024)
    """
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _SIZE_UNITS:
        raise ValueError(f"Cannot read the size {text!r}; write it like 500kB, 2MB or 1234.")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def parse_date(text: str) -> date | datetime:
    """A capture-time bound from ``"2021-01-01"`` or ``"2021-01-01T12:00:00"`` (UTC if naive).

    Example:
        >>> parse_date("2021-01-01")
        datetime.date(2021, 1, 1)
    """
    try:
        if len(text.strip()) == 10:
            return date.fromisoformat(text.strip())
        return datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"Cannot read the date {text!r}; write it like 2021-01-31 or 2021-01-31T18:00."
        ) from None


def filter_from_text(
    folder: str | None = None,
    after: str | None = None,
    before: str | None = None,
    types: Sequence[str] = (),
    min_size: str | None = None,
    max_size: str | None = None,
    orientation: str | None = None,
) -> SearchFilter | None:
    """A ``SearchFilter`` from command-line text; a relative folder is taken from the cwd.

    Example:
        >>> filter_from_text(folder="/photos/2021", after="2021-06-01", types=["jpg"])
        SearchFilter(folder='/photos/2021', after=datetime.date(2021, 6, 1), ...)
    """
    if folder:
        folder = Path(folder).expanduser().absolute().as_posix()
    built = SearchFilter(
        folder=folder or None,
        after=parse_date(after) if after else None,
        before=parse_date(before) if before else None,
        formats=tuple(types),
        min_size=parse_size(min_size) if min_size else None,
        max_size=parse_size(max_size) if max_size else None,
        orientation=parse_orientation(orientation) if orientation else None,
    )
    return None if built.is_empty() else built


ORIENTATIONS = ("landscape", "portrait", "square")


def orientation_of(width: int, height: int) -> str:
    """How a picture stands, as ingest records it.

    >>> orientation_of(4000, 3000), orientation_of(3000, 4000), orientation_of(512, 512)
    ('landscape', 'portrait', 'square')
    """
    return "landscape" if width > height else "portrait" if height > width else "square"


def parse_orientation(text: str) -> str:
    """``--orientation`` checked against the three values ingest records."""
    value = text.strip().lower()
    if value not in ORIENTATIONS:
        raise ValueError(f"Unknown orientation {text!r}; use {', '.join(ORIENTATIONS)}.")
    return value

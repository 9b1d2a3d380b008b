"""What a collection can be filtered by (folders, file types, capture dates), read from
its payloads, and the ``SearchFilter`` a set of choices in the sidebar means.

Example:
    >>> facets = collect_facets(store.iter_payloads())
    >>> facets.to_filter(FilterChoices(folder=facets.folders[1][0], formats=("png",)))
    SearchFilter(folder='.../photos/2021', ..., formats=('png',), ...)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from twinrank.search import SearchFilter, folder_key

MAX_FOLDERS = 1000  # choices in the folder box; the biggest folders win beyond this


@dataclass(frozen=True)
class FilterChoices:
    """What the person picked; None / empty means no restriction."""

    folder: str | None = None
    formats: tuple[str, ...] = ()
    first_day: date | None = None
    last_day: date | None = None  # inclusive


@dataclass(frozen=True)
class Facets:
    """The values present in a collection, for the sidebar's filter widgets."""

    images: int = 0
    root: str | None = None  # the deepest folder holding every image
    folders: list[tuple[str, int]] = field(default_factory=list)  # (folder, images), root first
    formats: list[str] = field(default_factory=list)
    first_day: date | None = None
    last_day: date | None = None

    def folder_label(self, folder: str) -> str:
        """A folder as the sidebar shows it: relative to the collection's root, with a count."""
        count = dict(self.folders).get(folder, 0)
        if self.root and folder == self.root:
            return f"All folders ({count})"
        shown = folder
        if self.root and folder.startswith(self.root.rstrip("/") + "/"):
            shown = folder[len(self.root.rstrip("/")) + 1:]
        return f"{shown} ({count})"

    def to_filter(self, choices: FilterChoices) -> SearchFilter | None:
        """The store filter for ``choices``; None when nothing restricts the search."""
        folder = choices.folder if choices.folder and choices.folder != self.root else None
        after = choices.first_day
        before = choices.last_day + timedelta(days=1) if choices.last_day else None
        if after is not None and self.first_day is not None and after <= self.first_day:
            after = None
        if choices.last_day is not None and self.last_day is not None and \
                choices.last_day >= self.last_day:
            before = None
        chosen = SearchFilter(folder=folder, after=after, before=before,
                              formats=tuple(choices.formats))
        return None if chosen.is_empty() else chosen


def collect_facets(payloads: Iterable[tuple[str, Mapping[str, Any]]]) -> Facets:
    """One pass over the payloads: folder counts, file types and the capture-date range."""
    folders: Counter[str] = Counter()
    formats: set[str] = set()
    days: list[str] = []
    images = 0
    for _, payload in payloads:
        images += 1
        folders.update(folder_key(f) for f in payload.get("folders") or [])
        if payload.get("format"):
            formats.add(str(payload["format"]))
        if payload.get("captured_at"):
            days.append(str(payload["captured_at"])[:10])
    if not images:
        return Facets()
    root = max((f for f, n in folders.items() if n == images), key=len, default=None)
    below = [(f, n) for f, n in folders.items() if root is None or _inside(f, root)]
    below = sorted(below, key=lambda item: -item[1])[:MAX_FOLDERS]
    ordered = sorted(below, key=lambda item: (item[0] != root, item[0]))
    return Facets(images=images, root=root, folders=ordered, formats=sorted(formats),
                  first_day=_day(min(days)) if days else None,
                  last_day=_day(max(days)) if days else None)


def _inside(folder: str, root: str) -> bool:
    return folder == root or folder.startswith(root.rstrip("/") + "/")


def _day(text: str) -> date | None:
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None

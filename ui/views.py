"""What the app shows, as plain functions the tests can call without a browser."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

from twinrank.search.hits import Hit

_MARKUP = re.compile(r"([!-/:-@\[-`{-~])")  # every ASCII punctuation character
# Bare URLs and e-mail addresses are linked after escapes are read (GFM's autolink
# literals work on the parsed text), so a word joiner (U+2060, invisible) breaks them
_AUTOLINK = re.compile(r"(?i)(https?(?=:/)|www(?=\.)|(?=@))")
TIMING_LABELS = {
    "encode_ms": "text encoding",
    "image_encode_ms": "image encoding",
    "search_ms": "vector search",
    "rerank_ms": "rerank",
}


def movement(hit: Hit, k: int) -> str:
    """How far reranking moved a hit: '↑3', '↓2', '=', or 'new' if it was outside the top k."""
    if hit.rerank_rank is None:
        return ""
    if hit.bi_rank > k:
        return "new"
    moved = hit.bi_rank - hit.rerank_rank
    if moved > 0:
        return f"↑{moved}"
    if moved < 0:
        return f"↓{-moved}"
    return "="


def markdown_safe(text: str) -> str:
    r"""``text`` for a place Streamlit renders as Markdown (alerts, button labels, image
    captions): every ASCII punctuation character is backslash-escaped (CommonMark shows an
    escaped one as itself), so no link, image, emphasis, code, colour directive, icon,
    LaTeX or HTML can start, and a file name or a query shows as it is spelled. A bare
    URL or e-mail address gets an invisible word joiner, so it is not made a link; line
    breaks become spaces, so a name cannot start a heading or a list.

    Example:
        >>> print(markdown_safe("a`![x](y)`$z$.png"))
        a\`\!\[x\]\(y\)\`\$z\$\.png
        >>> markdown_safe("https://e.example") == "https\u2060\\:\\/\\/e\\.example"
        True
    """
    text = _AUTOLINK.sub(r"\1" + "\u2060", " ".join(text.splitlines()))
    return _MARKUP.sub(r"\\\1", text)


def path_name(path: str) -> str:
    """The file name at the end of ``path``. Stored paths use ``/`` on every system
    (``Path.as_posix``), so a backslash is part of a name (``a\\b.png`` is a legal
    Linux file name), never a separator."""
    return path.rsplit("/", 1)[-1]


def file_name(hit: Hit) -> str:
    return path_name(hit.path)


def caption(hit: Hit, stage: str, k: int) -> str:
    """One line under a result: rank, score, movement (after reranking) and file name.

    Example:
        >>> hit = Hit("id", "/photos/beach.jpg", score=2.31, bi_score=0.28, bi_rank=4,
        ...           rerank_score=2.31, rerank_rank=1)
        >>> caption(hit, "after", 8)
        '#1 · match 2.310 · ↑3 · beach.jpg'
    """
    name = file_name(hit)
    if stage == "before" or hit.rerank_rank is None:
        return f"#{hit.bi_rank} · cos {hit.bi_score:.3f} · {name}"
    score = hit.rerank_score if hit.rerank_score is not None else hit.score
    return f"#{hit.rerank_rank} · match {score:.3f} · {movement(hit, k)} · {name}"


def timing_line(timings: dict[str, float]) -> str:
    """The time each stage took, e.g. 'text encoding 12.0 ms · vector search 1.5 ms'."""
    parts = [f"{label} {timings[key]:.1f} ms" for key, label in TIMING_LABELS.items()
             if key in timings]
    total = sum(timings[key] for key in TIMING_LABELS if key in timings)
    if len(parts) > 1:
        parts.append(f"total {total:.1f} ms")
    return " · ".join(parts)


def moved_summary(after: list[Hit], k: int) -> str:
    """How much reranking changed the list, in one line."""
    marks = [movement(h, k) for h in after]
    new = marks.count("new")
    moved = sum(1 for m in marks if m not in ("=", "", "new"))
    if not moved and not new:
        return "Reranking kept the bi-encoder's order."
    return f"Reranking moved {moved} of {len(after)} images and brought in {new} new."


def metadata_rows(payload: dict[str, Any]) -> list[tuple[str, str]]:
    """The facts about one image worth showing, as (label, value) pairs."""
    rows: list[tuple[str, str]] = []
    paths = [str(p) for p in payload.get("paths") or []]
    for index, path in enumerate(paths):
        rows.append(("path" if index == 0 else "also at", path))
    if payload.get("width") and payload.get("height"):
        rows.append(("size", f"{payload['width']} × {payload['height']} px"))
    if payload.get("format"):
        rows.append(("file type", str(payload["format"])))
    if payload.get("size") is not None:
        rows.append(("file size", human_bytes(int(payload["size"]))))
    if payload.get("captured_at"):
        source = payload.get("captured_at_source")
        note = " (from EXIF)" if source == "exif" else " (file time)" if source else ""
        rows.append(("taken", f"{_readable_time(str(payload['captured_at']))}{note}"))
    if payload.get("ingested_at"):
        rows.append(("indexed", _readable_time(str(payload["ingested_at"]))))
    return rows


def human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def _readable_time(text: str) -> str:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return text
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

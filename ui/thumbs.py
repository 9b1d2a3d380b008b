"""Thumbnails made once per image and kept on disk, so a result page loads fast at any size.

A thumbnail is keyed by the point id, which is derived from the file's content: the
cached file stays right for as long as the point exists, whatever its paths. The source
is always a path from the point's payload (a file of the collection), never one sent by
the browser.

Example:
    >>> cache = ThumbnailCache(Path("~/.twinrank/photos/thumbs").expanduser())
    >>> cache.get(hit.id, hit.payload).suffix  # a small JPEG, or None if the file is gone
    '.jpg'
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from PIL import Image

# The project's one image reader, for thumbnails and uploads alike (the app imports it
# from here): the same pixel and file-size limits as ingest, so an image that was indexed
# can be shown.
from twinrank.search.images import ImageReadError as ImageReadError
from twinrank.search.images import open_image as open_image

log = logging.getLogger(__name__)

THUMB_SIZE = 256  # longest side, pixels: sharp at the app's 160-200 px display width
PREVIEW_SIZE = 1600  # the "details" view: big enough to look at, never a 40 MP original
THUMBS_DIR = "thumbs"


def collection_paths(payload: dict[str, Any]) -> list[str]:
    """The file paths a point's payload records; the only files the app may open."""
    return [str(p) for p in payload.get("paths") or [] if p]


def first_existing(paths: Iterable[str]) -> Path | None:
    for path in paths:
        candidate = Path(path)
        if candidate.is_file():
            return candidate
    return None


class ThumbnailCache:
    """Small JPEGs of collection images under ``folder``, made on first use.

    When ``folder`` cannot be written (a read-only store), thumbnails go to a folder in
    the system's temporary directory instead.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = _writable_folder(folder)

    def get(self, point_id: str, payload: dict[str, Any], size: int = THUMB_SIZE) -> Path | None:
        """The thumbnail of point ``point_id`` (longest side ``size``), or None if no file
        of the point can be read."""
        target = self.path_for(point_id, size)
        if target.is_file():
            return target
        source = first_existing(collection_paths(payload))
        if source is None:
            return None
        try:
            image = open_image(source, target_size=size)
        except ImageReadError as error:
            log.warning("%s", error)
            return None
        image.thumbnail((size, size))
        _write_atomically(target, _jpeg_bytes(image))
        return target

    def path_for(self, point_id: str, size: int) -> Path:
        key = str(uuid.UUID(point_id))  # raises on anything but a point id: no path tricks
        return self.folder / key[:2] / f"{key}_{size}.jpg"


def _jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85, optimize=True)
    return buffer.getvalue()


def _write_atomically(target: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so two sessions never see half a JPEG."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, suffix=".part")
    with os.fdopen(handle, "wb") as out:
        out.write(data)
    os.replace(temporary, target)


def _writable_folder(folder: Path) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
        return folder
    except OSError:
        fallback = Path(tempfile.gettempdir()) / "twinrank-thumbs" / uuid.uuid5(
            uuid.NAMESPACE_URL, str(folder.resolve())).hex
        fallback.mkdir(parents=True, exist_ok=True)
        log.warning("Cannot write thumbnails to %s; using %s", folder, fallback)
        return fallback

"""Find the image files under a folder."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif"}
)


def iter_image_files(root: str | Path, include_hidden: bool = False) -> Iterator[Path]:
    """Image files under ``root`` (recursive, extensions in any case), in a stable order.

    Hidden files and folders are skipped unless asked; symlinked folders are not followed,
    so a link loop can never hang the walk.

    Example:
        >>> sorted(iter_image_files("photos"))  # doctest: +SKIP
        [PosixPath('photos/2021/a.jpg'), ...]
    """
    root = Path(root).expanduser()
    if root.is_file():
        yield root
        return
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if include_hidden or not d.startswith("."))
        for name in sorted(files):
            if not include_hidden and name.startswith("."):
                continue
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                yield Path(folder) / name

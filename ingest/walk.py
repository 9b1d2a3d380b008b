"""Find the image files under a folder: recursive, loop-proof, filtered by globs.

Which formats count as images depends on what Pillow can open here: JPEG, PNG, WebP,
GIF, BMP and TIFF always; AVIF when Pillow was built with it or ``pillow-avif-plugin`` is
installed; HEIC/HEIF when ``pillow-heif`` is installed. Extensions match in any case.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

BASE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".dib",
     ".tif", ".tiff"}
)
HEIF_SUFFIXES = frozenset({".heic", ".heif", ".hif"})
AVIF_SUFFIXES = frozenset({".avif"})
FORMATS = "JPEG, PNG, WebP, GIF, BMP, TIFF (HEIC/AVIF with their Pillow plugin)"


@cache
def image_suffixes() -> frozenset[str]:
    """The file extensions (lower case, with the dot) this installation can decode.

    Registers the optional HEIF/AVIF Pillow plugins when they are installed; never fails
    when they are not.
    """
    from PIL import features

    suffixes = set(BASE_SUFFIXES)
    with contextlib.suppress(ImportError):
        from pillow_heif import register_heif_opener

        register_heif_opener()
        suffixes |= HEIF_SUFFIXES
    with contextlib.suppress(ImportError):
        import pillow_avif  # noqa: F401  (importing registers the plugin)

        suffixes |= AVIF_SUFFIXES
    with contextlib.suppress(Exception):
        if features.check("avif"):
            suffixes |= AVIF_SUFFIXES
    return frozenset(suffixes)


@dataclass(frozen=True)
class WalkOptions:
    """Which files under a root are ingested.

    ``include``/``exclude`` are globs, matched case-insensitively. A glob without ``/``
    matches a file or folder name at any depth (``*.png``, ``@eaDir``); one with ``/``
    matches the path relative to the root (``2021/**``, ``**/thumbs/*``). A file must
    match one ``include`` glob (when any are given) and no ``exclude`` glob; an excluded
    folder is not entered at all.
    """

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    include_hidden: bool = False
    follow_links: bool = True


def iter_image_files(
    root: str | Path, include_hidden: bool = False, options: WalkOptions | None = None
) -> Iterator[Path]:
    """Image files under ``root`` (recursive, extensions in any case), in a stable order.

    Hidden files and folders are skipped unless asked. Symlinked folders are followed
    once each (by device and inode), so a link loop can never hang the walk; a folder
    that cannot be listed is skipped.

    Example:
        >>> sorted(iter_image_files("photos"))
        [PosixPath('photos/2021/a0.png'), ..., PosixPath('photos/2022/b5.jpg')]
    """
    options = options or WalkOptions(include_hidden=include_hidden)
    root = Path(root).expanduser()
    if root.is_file():
        yield root
        return
    matcher = _GlobMatcher(options.include, options.exclude)
    suffixes = image_suffixes()
    seen: set[tuple[int, int]] = set()
    yield from _walk(root, "", options, matcher, suffixes, seen)


def has_images(root: str | Path, options: WalkOptions | None = None) -> bool:
    """Whether the walk finds at least one image file under ``root`` (stops at the first).

    Example:
        >>> has_images("photos")
        True
    """
    return next(iter(iter_image_files(root, options=options)), None) is not None


def _walk(
    folder: Path,
    relative: str,
    options: WalkOptions,
    matcher: _GlobMatcher,
    suffixes: frozenset[str],
    seen: set[tuple[int, int]],
) -> Iterator[Path]:
    try:
        identity = folder.stat()
        key = (identity.st_dev, identity.st_ino)
        if key in seen:  # a link loop, or a folder reached twice through links
            return
        seen.add(key)
        with os.scandir(folder) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
    except OSError:
        return
    for entry in entries:
        name = entry.name
        if name.startswith(".") and not options.include_hidden:
            continue
        rel = f"{relative}{name}"
        if _is_folder(entry, options.follow_links):
            if not matcher.excluded(name, rel):
                yield from _walk(Path(entry.path), rel + "/", options, matcher, suffixes, seen)
        elif os.path.splitext(name)[1].lower() in suffixes and matcher.wanted(name, rel):
            if entry.is_symlink() and not options.follow_links:
                continue
            yield Path(entry.path)


def _is_folder(entry: os.DirEntry[str], follow_links: bool) -> bool:
    try:
        if entry.is_symlink() and not follow_links:
            return False
        return stat.S_ISDIR(os.stat(entry.path).st_mode)
    except OSError:  # a dangling link: not a folder (the file check reports it)
        return False


class _GlobMatcher:
    def __init__(self, include: Sequence[str], exclude: Sequence[str]) -> None:
        self.include = [_compile(p) for p in include]
        self.exclude = [_compile(p) for p in exclude]

    def excluded(self, name: str, rel: str) -> bool:
        return any(_matches(p, name, rel) for p in self.exclude)

    def wanted(self, name: str, rel: str) -> bool:
        if self.excluded(name, rel):
            return False
        return not self.include or any(_matches(p, name, rel) for p in self.include)


def _matches(pattern: tuple[bool, re.Pattern[str]], name: str, rel: str) -> bool:
    has_slash, regex = pattern
    return bool(regex.fullmatch(rel if has_slash else name))


def _compile(glob: str) -> tuple[bool, re.Pattern[str]]:
    """A glob as a regex: ``**/`` spans folders, ``*`` and ``?`` stay within one name."""
    glob = glob.strip().removeprefix("./")
    has_slash = "/" in glob.rstrip("/")
    glob = glob.rstrip("/")
    parts: list[str] = []
    i = 0
    while i < len(glob):
        if glob.startswith("**/", i):
            parts.append("(?:.*/)?")
            i += 3
        elif glob.startswith("**", i):
            parts.append(".*")
            i += 2
        elif glob[i] == "*":
            parts.append("[^/]*")
            i += 1
        elif glob[i] == "?":
            parts.append("[^/]")
            i += 1
        elif glob[i] == "[":
            end = glob.find("]", i + 1)
            if end < 0:
                parts.append(re.escape(glob[i]))
                i += 1
            else:
                parts.append(fnmatch.translate(glob[i : end + 1])[4:-3])
                i = end + 1
        else:
            parts.append(re.escape(glob[i]))
            i += 1
    return has_slash, re.compile("".join(parts), re.IGNORECASE)

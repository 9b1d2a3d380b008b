"""Find the image files under a folder: recursive, loop-proof, filtered by globs.

Which formats count as images depends on what Pillow can open here: JPEG, PNG, WebP,
GIF, BMP and TIFF always; AVIF when Pillow was built with it or ``pillow-avif-plugin`` is
installed; HEIC/HEIF when ``pillow-heif`` is installed. Extensions match in any case.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from twinrank.display import printable
from twinrank.store import META_FILE, SHARD_DIR
from twinrank.store.space import mount_types

BASE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".dib",
     ".tif", ".tiff"}
)
HEIF_SUFFIXES = frozenset({".heic", ".heif", ".hif"})
AVIF_SUFFIXES = frozenset({".avif"})
FORMATS = "JPEG, PNG, WebP, GIF, BMP, TIFF (HEIC/AVIF with their Pillow plugin)"

_mount_types = cache(mount_types)  # read once per process, not per folder


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


@dataclass
class WalkLog:
    """What the walk did not look into, and why: the ingest report lists each folder.

    ``unread`` folders could not be listed (no permission, a path longer than the system
    allows): their images are unknown, so ``--prune`` keeps every path under them.
    ``refused`` folders were not entered on purpose: a pseudo-filesystem (``/proc``,
    ``/sys``, ``/dev``), a link back to a folder that contains it (a loop; a link to
    ``/``), or a twinrank store (its own thumbnails are not photos).
    """

    unread: list[tuple[str, str]] = field(default_factory=list)  # (folder, reason)
    refused: list[tuple[str, str]] = field(default_factory=list)


def iter_image_files(
    root: str | Path, include_hidden: bool = False, options: WalkOptions | None = None,
    log: WalkLog | None = None,
) -> Iterator[Path]:
    """Image files under ``root`` (recursive, extensions in any case), in a stable order.

    Hidden files and folders are skipped unless asked. Symlinked folders are followed
    once each (by device and inode), so a link loop can never hang the walk. Never
    entered: pseudo-filesystems, a link to a folder that contains it and twinrank stores;
    these and the folders that cannot be listed are recorded in ``log``.

    Example:
        >>> sorted(iter_image_files("photos"))
        [PosixPath('photos/2021/a0.png'), ..., PosixPath('photos/2022/b5.jpg')]
    """
    options = options or WalkOptions(include_hidden=include_hidden)
    root = Path(root).expanduser()
    if root.is_file():
        yield root
        return
    walker = _Walker(options, log if log is not None else WalkLog())
    yield from walker.walk_root(root)


def has_images(root: str | Path, options: WalkOptions | None = None) -> bool:
    """Whether the walk finds at least one image file under ``root`` (stops at the first).

    Example:
        >>> has_images("photos")
        True
    """
    return next(iter(iter_image_files(root, options=options)), None) is not None


class _Walker:
    """One walk: the folders seen (by device and inode), and the record of what it skipped."""

    def __init__(self, options: WalkOptions, log: WalkLog) -> None:
        self.options = options
        self.log = log
        self.matcher = _GlobMatcher(options.include, options.exclude)
        self.suffixes = image_suffixes()
        self.seen: set[tuple[int, int]] = set()

    def walk_root(self, root: Path) -> Iterator[Path]:
        try:
            info = root.stat()
        except OSError as error:
            self.log.unread.append((root.as_posix(), _folder_reason(error)))
            return
        refusal = _pseudo_filesystem(root, info)
        if refusal:
            self.log.refused.append((root.as_posix(), refusal))
            return
        # the root's own ancestors: a link to any of them leads back into the walk
        above = (_identity(p) for p in Path(os.path.realpath(root)).parents)
        yield from self._walk(root, "", info, frozenset(key for key in above if key))

    def _walk(self, folder: Path, relative: str, info: os.stat_result,
              ancestors: frozenset[tuple[int, int]]) -> Iterator[Path]:
        key = (info.st_dev, info.st_ino)
        if key in self.seen:  # a folder reached twice through links
            return
        self.seen.add(key)
        try:
            with os.scandir(folder) as scan:
                entries = sorted(scan, key=lambda entry: entry.name)
        except OSError as error:
            self.log.unread.append((folder.as_posix(), _folder_reason(error)))
            return
        if _is_store(entries):
            self.log.refused.append((folder.as_posix(), "a twinrank store: its own files "
                                                        "(thumbnails) are not indexed"))
            return
        ancestors = ancestors | {key}
        for entry in entries:
            name = entry.name
            if name.startswith(".") and not self.options.include_hidden:
                continue
            rel = f"{relative}{name}"
            inner = self._folder(entry, info, ancestors)
            if inner is not None:
                if not self.matcher.excluded(name, rel):
                    yield from self._walk(Path(entry.path), rel + "/", inner, ancestors)
            elif os.path.splitext(name)[1].lower() in self.suffixes and \
                    self.matcher.wanted(name, rel):
                if entry.is_symlink() and not self.options.follow_links:
                    continue  # (a linked device or FIFO is refused by the reader)
                yield Path(entry.path)

    def _folder(self, entry: os.DirEntry[str], parent: os.stat_result,
                ancestors: frozenset[tuple[int, int]]) -> os.stat_result | None:
        """The stat of ``entry`` when it is a folder to enter, else None (refusals logged)."""
        linked = False
        try:
            linked = entry.is_symlink()
            if linked and not self.options.follow_links:
                return None
            if not linked and not entry.is_dir(follow_symlinks=False):
                return None
            info = os.stat(entry.path)
        except OSError as error:  # a dangling link: not a folder (the file check reports it)
            if not linked or error.errno == errno.ENAMETOOLONG:
                self.log.unread.append((entry.path, _folder_reason(error)))
            return None
        if not stat.S_ISDIR(info.st_mode):
            return None
        if linked and (info.st_dev, info.st_ino) in ancestors:
            self.log.refused.append((entry.path, "a link to a folder that contains it "
                                                 "(a loop); not followed"))
            return None
        if linked or info.st_dev != parent.st_dev:  # another filesystem, perhaps
            refusal = _pseudo_filesystem(Path(entry.path), info)
            if refusal:
                self.log.refused.append((entry.path, refusal))
                return None
        return info


PSEUDO_FILESYSTEMS = frozenset({
    "proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "securityfs", "debugfs",
    "tracefs", "pstore", "bpf", "configfs", "fusectl", "mqueue", "hugetlbfs",
    "binfmt_misc", "efivarfs", "selinuxfs", "rpc_pipefs", "nsfs",
})
PSEUDO_FOLDERS = ("/proc", "/sys", "/dev")  # whatever is mounted there (/dev: a tmpfs too)


def _pseudo_filesystem(path: Path, info: os.stat_result) -> str:
    """Why the folder ``path`` is on a pseudo-filesystem, else ''."""
    kind = _mount_types().get((os.major(info.st_dev), os.minor(info.st_dev)))
    real = os.path.realpath(path)
    inside = next((f for f in PSEUDO_FOLDERS if real == f or real.startswith(f + "/")), None)
    if kind in PSEUDO_FILESYSTEMS or inside:
        where = f"{kind}" if kind in PSEUDO_FILESYSTEMS else f"{inside}"
        return (f"on a pseudo-filesystem ({where}, at {printable(real)}), not photos; not "
                f"followed")
    return ""




def _identity(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _is_store(entries: Sequence[os.DirEntry[str]]) -> bool:
    """Whether a folder holding ``entries`` is a twinrank store (its record and its shard)."""
    names = {entry.name for entry in entries}
    return META_FILE in names and SHARD_DIR in names


def _folder_reason(error: OSError) -> str:
    if error.errno == errno.ENAMETOOLONG:
        return ("its path is longer than this system allows: the images in it cannot be "
                "read; shorten a folder name")
    if isinstance(error, PermissionError):
        return "cannot read folder: permission denied"
    return f"cannot read folder: {(error.strerror or str(error)).lower()}"


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

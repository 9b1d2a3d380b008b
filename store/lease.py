"""Sharing one embedded Qdrant Edge folder between processes: ask, and the holder hands over.

Qdrant Edge lets one process at a time open a shard folder (a second open fails with
``WouldBlock``). The UI keeps its store open for hours while ``twinrank ingest`` writes to
the same folder, so each ``EdgeStore`` holds its shard on a *lease*:

- only the process holding an exclusive ``flock`` on ``FOLDER/.lock`` may open the shard.
  This matters: a failed ``EdgeShard.load`` of a folder another process has open is not
  harmless -- it truncates the holder's payload-index journal (measured with
  qdrant-edge-py 0.9: the holder's next flush fails with "Tracker journal ... is shorter
  than expected"). So a process never even tries to open a shard it does not hold the
  lock for;
- an operation that finds the shard closed opens it; if another process holds it, it drops
  a request file in ``FOLDER/.requests/`` and retries until ``wait_s`` passes, then raises
  ``StoreBusyError`` (a clear message, never a hang);
- a holder's watcher thread sees other processes' requests and, between operations,
  flushes and closes the shard so the requester can open it; its next operation queues
  for it again. Requests are served oldest first, so neither side starves.

Every operation therefore sees everything flushed before it; a UI query during an ingest
costs one reopen (~0.1-0.2 s) and sees the images written so far.

A folder this process cannot write (a read-only mount, a shared NAS, a backup) can still be
searched: nobody can be writing it, so no lock is needed, but Qdrant Edge opens its segments
for writing (memory-mapped read-write) and replays its WAL, even to read. ``readable_copy``
therefore copies the collection to a private temporary folder that the lease opens and
deletes again on ``close``.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import stat
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from twinrank.store.schema import StoreBusyError, StoreError

REQUESTS_DIR = ".requests"
LOCK_FILE = ".lock"
log = logging.getLogger(__name__)


class ShardLease:
    """One process's claim on a shard folder: opened on demand, handed over when asked.

    Example:
        >>> from qdrant_edge import CountRequest, EdgeShard
        >>> folder = Path("store")  # made by `twinrank ingest photos --store store`
        >>> lease = ShardLease(folder, lambda: EdgeShard.load(str(folder / "shard")))
        >>> with lease.hold() as shard:
        ...     shard.count(CountRequest(exact=True))
        6
        >>> lease.close()
    """

    def __init__(
        self, folder: Path, opener: Callable[[], Any], wait_s: float = 15.0, poll_s: float = 0.05,
        scratch: Path | None = None,
    ) -> None:
        """``scratch``: a private copy (``readable_copy``) that ``close`` deletes."""
        self.folder = folder
        self.wait_s = wait_s
        self.poll_s = poll_s
        self._opener = opener
        self._shard: Any = None
        self._lock_fd: int | None = None
        self.generation = 0  # counts opens: another process may have written in between
        self._users = 0
        self._closed = False
        self._lock = threading.Lock()
        self._requests = folder / REQUESTS_DIR
        self._requests.mkdir(parents=True, exist_ok=True)
        self._token = f"{os.getpid()}-{id(self)}"
        self._watcher = threading.Thread(target=self._watch, name="twinrank-lease", daemon=True)
        self._watcher.start()
        self._scratch = (weakref.finalize(self, shutil.rmtree, scratch, True)
                         if scratch is not None else None)
        self.read_only = scratch is not None  # the shard is a copy: writes would be lost

    @contextlib.contextmanager
    def hold(self) -> Iterator[Any]:
        """The open shard, kept open (not handed over) until the block ends."""
        with self._lock:
            if self._closed:
                raise StoreError(f"The store at {self.folder} is closed; open it again.")
            if self._shard is None:
                self._shard = self._acquire()
                self.generation += 1
            self._users += 1
            shard = self._shard
        try:
            yield shard
        finally:
            with self._lock:
                self._users -= 1

    def release(self) -> bool:
        """Flush and close the shard if no operation is using it; True when it did."""
        with self._lock:
            if self._shard is None or self._users:
                return False
            shard, self._shard = self._shard, None
            self._close_shard(shard)
            return True

    def close(self) -> None:
        """Hand the shard back for good; later operations raise ``StoreError``."""
        with self._lock:
            self._closed = True
            shard, self._shard = self._shard, None
            try:
                if shard is not None:
                    self._close_shard(shard)
            finally:
                if self._scratch is not None:
                    self._scratch()  # the private copy of a read-only store goes

    def _close_shard(self, shard: Any) -> None:
        try:
            shard.flush()
            shard.close()
        finally:
            self._unlock()

    @property
    def is_open(self) -> bool:
        return self._shard is not None

    def _acquire(self) -> Any:
        deadline = time.monotonic() + self.wait_s
        mine: Path | None = None
        try:
            while True:
                if not self._waiting_before(mine):
                    shard = self._try_open()
                    if shard is not None:
                        return shard
                if mine is None:
                    mine = self._requests / f"{time.time_ns():020d}-{self._token}"
                    mine.touch()
                if time.monotonic() > deadline:
                    raise StoreBusyError(
                        f"The store at {self.folder} is in use by another process (an "
                        f"ingest, the UI or a long optimise) and was not handed over within "
                        f"{self.wait_s:.0f} s. Try again when it finishes."
                    )
                time.sleep(self.poll_s)
        finally:
            if mine is not None:
                mine.unlink(missing_ok=True)

    def _try_open(self) -> Any:
        """The opened shard, or None when another process holds the folder's lock."""
        fd = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        self._lock_fd = fd
        try:
            return self._opener()
        except Exception as error:
            self._unlock()
            if "WouldBlock" in str(error):  # a process that does not take our lock
                raise StoreBusyError(
                    f"The store at {self.folder} is open in a program that does not share "
                    f"it (an older twinrank?). Close that program, then try again."
                ) from error
            raise StoreError(f"Could not open the store at {self.folder}: {error}") from error

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def _waiting_before(self, mine: Path | None) -> bool:
        """Whether another live process asked for the shard before ``mine`` (or at all)."""
        return any(mine is None or name < mine.name for name in self._other_requests())

    def _other_requests(self) -> list[str]:
        names = []
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self._requests):
                if entry.name.endswith(self._token):
                    continue
                if _alive(entry.name):
                    names.append(entry.name)
                else:
                    Path(entry.path).unlink(missing_ok=True)
        return names

    def _watch(self) -> None:
        while not self._closed:
            time.sleep(self.poll_s)
            try:
                if self._shard is not None and self._other_requests():
                    self.release()
            except Exception:  # a failed hand-over must not kill the watcher
                log.exception("Could not hand the store at %s over", self.folder)


def is_writable(folder: Path) -> bool:
    """Whether this process may write the collection folder (its lock and its shard)."""
    probes = [folder, folder / LOCK_FILE, folder / REQUESTS_DIR, folder / "shard"]
    return all(os.access(p, os.W_OK) for p in probes if p.exists())


def readable_copy(folder: Path, shard_dir: str = "shard") -> Path:
    """A private, writable copy of a read-only collection's shard, to search it.

    Returns the temporary folder that holds ``shard_dir``; the caller passes it to
    ``ShardLease(scratch=...)``, which deletes it on close. Raises ``StoreError`` with the
    reason when the copy cannot be made (no space, an unreadable file).
    """
    scratch = Path(tempfile.mkdtemp(prefix="twinrank-readonly-"))
    try:
        shutil.copytree(folder / shard_dir, scratch / shard_dir, copy_function=shutil.copyfile)
        for place, folders, files in os.walk(scratch):
            for name in folders + files:
                path = os.path.join(place, name)
                os.chmod(path, os.stat(path).st_mode | stat.S_IWUSR | stat.S_IRUSR)
    except OSError as error:
        shutil.rmtree(scratch, ignore_errors=True)
        raise StoreError(
            f"The store at {folder} is read-only and could not be copied to a temporary "
            f"folder to search it ({error.strerror or error}). Copy it to a writable folder "
            f"and pass that with --store."
        ) from None
    return scratch


def _alive(request_name: str) -> bool:
    """Whether the process that wrote this request file still runs."""
    try:
        pid = int(request_name.split("-")[1])
        os.kill(pid, 0)
    except (IndexError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True

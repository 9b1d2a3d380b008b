"""Sharing one embedded Qdrant Edge folder between processes: writers take turns, readers
ask the holder.

Qdrant Edge lets one process at a time open a shard folder (a second open fails with
``WouldBlock``). The UI keeps its store open for hours while ``twinrank ingest`` writes to
the same folder, and many ``twinrank search`` processes may read it meanwhile, so each
``EdgeStore`` holds its shard on a *lease*:

- only the process holding an exclusive ``flock`` on ``FOLDER/.lock`` may open the shard.
  This matters: a failed ``EdgeShard.load`` of a folder another process has open is not
  harmless -- it truncates the holder's payload-index journal (measured with
  qdrant-edge-py 0.9: the holder's next flush fails with "Tracker journal ... is shorter
  than expected"). So a process never even tries to open a shard it does not hold the
  lock for;
- the holder answers other processes' *reads* (``store.serve``: search, count, tokens,
  payloads) on ``FOLDER/.serve.sock`` while it holds the shard. A read (``read``) runs
  here when this process holds the shard or the folder is free (then this process opens
  it and becomes the holder); otherwise it goes to the holder. No hand-over, so twenty
  searches during an ingest cost the ingest a few milliseconds each, not a reopen each.
  While the folder changes hands (a holder closing, the next one opening: seconds on a
  crowded machine) a read waits, up to ``wait_s`` from the last new holder it saw;
- a *write* (``hold``) that finds the shard held elsewhere drops a request file in
  ``FOLDER/.requests/`` and retries until ``wait_s`` passes, then raises
  ``StoreBusyError`` (a clear message, never a hang). The holder's watcher thread sees the
  request and, between operations, stops answering reads, flushes and closes the shard so
  the requester can open it; its next write queues for it again, its reads go to the new
  holder. Requests are served oldest first, and no reader takes a free folder while a
  writer waits for it, so neither side starves;
- a step in ``hold(exclusive=True)`` (``EdgeStore.exclusive``: a multi-step change, a long
  optimise) keeps the folder *and* holds other processes' reads until it ends;
- a process that waits longer than ``NOTICE_AFTER_S`` says once, on stderr, what it
  waits for (the folder, and the process holding it, from ``FOLDER/.holder``).

Every operation therefore sees everything written before it, by any process.

A folder this process cannot write (a read-only mount, a shared NAS, a backup) can still be
searched: nobody can be writing it, so no lock is needed, but Qdrant Edge opens its segments
for writing (memory-mapped read-write) and replays its WAL, even to read. ``readable_copy``
therefore copies the collection to a private temporary folder that the lease opens and
deletes again on ``close``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import stat
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from twinrank.store import space
from twinrank.store.schema import StoreBusyError, StoreError
from twinrank.store.serve import HolderGone, HolderLink, NotServed, ReadServer, answer, encode

COPY_BLOCK = 64 * 1024  # bytes: the grain of holes in a private copy
REQUESTS_DIR = ".requests"
LOCK_FILE = ".lock"
HOLDER_FILE = ".holder"  # JSON: pid, program and whether it answers reads, of the holder
NOTICE_AFTER_S = 0.5  # a wait this long is said, once per process and folder
HELD_REPLY_S = 0.25  # a read kept waiting by a step this long is answered "held"
HANDS_WAIT = 4  # a read waits at most this many times wait_s, however often hands change
log = logging.getLogger(__name__)
T = TypeVar("T")
_noticed: set[str] = set()  # folders this process has said it waits for


class ShardLease:
    """One process's claim on a shard folder: opened on demand, handed over when asked,
    and, while held, answering other processes' reads of it.

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
        self._answering = 0  # of the users: other processes' reads being answered
        self._exclusive = 0  # of the users: steps no other process may read half of
        self._yielding = False  # a writer elsewhere waits: answer no more reads, hand over
        self._closed = False
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # a use ended
        self._store: object | None = None  # whose reads this process answers (``serve``)
        self._server: ReadServer | None = None
        self._link = HolderLink(folder)
        self._requests = folder / REQUESTS_DIR
        self._requests.mkdir(parents=True, exist_ok=True)
        self._token = f"{os.getpid()}-{id(self)}"
        self._watcher = threading.Thread(target=self._watch, name="twinrank-lease", daemon=True)
        self._watcher.start()
        self._scratch = (weakref.finalize(self, shutil.rmtree, scratch, True)
                         if scratch is not None else None)
        self.read_only = scratch is not None  # the shard is a copy: writes would be lost

    def serve(self, store: object) -> None:
        """Answer other processes' reads (``store.serve.SERVED`` methods of ``store``)
        whenever this process holds the shard."""
        self._store = store

    @contextlib.contextmanager
    def hold(self, exclusive: bool = False) -> Iterator[Any]:
        """The open shard, kept open (not handed over) until the block ends; ``exclusive``
        also keeps other processes' reads waiting until then."""
        with self._lock:
            if self._closed:
                raise StoreError(f"The store at {self.folder} is closed; open it again.")
            if self._shard is None:
                self._opened(self._acquire())
            self._users += 1
            self._exclusive += exclusive
            shard = self._shard
        try:
            yield shard
        finally:
            with self._lock:
                self._users -= 1
                self._exclusive -= exclusive
                self._changed.notify_all()

    def read(self, local: Callable[[], T], remote: Callable[[HolderLink], T]) -> T:
        """``local()`` with the shard open here, when this process holds it or the folder is
        free; else ``remote(link)``, the holder running the same read. Waits (saying so
        once) while the folder changes hands; ``StoreBusyError`` after ``wait_s`` without a
        new holder (each one, progress on a crowded machine, starts the budget afresh), or
        after ``HANDS_WAIT`` times ``wait_s`` in all."""
        started = since = time.monotonic()
        seen: int | None = None  # the holder's pid, when last looked at
        while True:
            with self._lock:
                if self._closed:
                    raise StoreError(f"The store at {self.folder} is closed; open it again.")
                if self._yielding:  # a writer waits: hand over now, read through it after
                    self._release_locked()
                if self._shard is None and not self._other_requests():
                    shard = self._try_open()  # a free folder: this process holds it now
                    if shard is not None:
                        self._opened(shard)
                here = self._shard is not None
                self._users += here
            if here:
                try:
                    return local()
                finally:
                    self._done(answering=False)
            self._link.timeout_s = max(self.wait_s - (time.monotonic() - since), 0.0)
            try:
                return remote(self._link)
            except HolderGone:
                holder = self._holder_record()
                if holder is not None and holder["pid"] != seen:
                    since = since if seen is None else time.monotonic()  # new hands
                    seen = holder["pid"]
                if holder is None:  # none of ours, past half the wait: an older twinrank
                    asks = time.monotonic() - since > self.wait_s / 2
                else:  # it answers no reads (no sockets on that file system)
                    asks = not holder.get("serves", False)
            except NotServed:  # a holder of another twinrank version
                asks = True
            if asks:  # ask for the folder, as writes do
                with self.hold():
                    return local()
            self._waited(since, started)

    def release(self) -> bool:
        """Flush and close the shard if no operation is using it; True when it did."""
        with self._lock:
            return self._release_locked()

    def _release_locked(self) -> bool:
        if self._shard is None or self._users:
            return False
        shard, self._shard = self._shard, None
        self._stop_serving()
        self._close_shard(shard)
        return True

    def close(self) -> None:
        """Hand the shard back for good; later operations raise ``StoreError``."""
        with self._lock:
            self._closed = True
            if self._shard is not None:
                self._stop_serving()
            deadline = time.monotonic() + self.wait_s
            while self._answering and time.monotonic() < deadline:  # let them finish
                self._changed.wait(self.poll_s)
            shard, self._shard = self._shard, None
            try:
                if shard is not None:
                    self._close_shard(shard)
            finally:
                self._link.close()
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

    def _opened(self, shard: Any) -> None:
        """This process holds the shard now: answer others' reads, and say who holds it."""
        self._shard = shard
        self.generation += 1
        self._yielding = False
        if self._serves():
            try:
                self._server = ReadServer(self.folder, self._answer)
            except OSError as error:  # a file system without sockets: readers ask instead
                log.warning("Other processes cannot read %s through this one (%s); they "
                            "will ask for it.", self.folder, error.strerror or error)
                self._say_holder(serves=False)

    def _serves(self) -> bool:
        return self._store is not None and not self.read_only

    def _say_holder(self, serves: bool) -> None:
        """Write ``FOLDER/.holder``: who holds the folder (from taking its lock, before the
        shard opens, so readers know someone is opening it), and whether it answers."""
        record = {"pid": os.getpid(), "program": _program(), "serves": serves}
        with contextlib.suppress(OSError):
            staged = self.folder / f"{HOLDER_FILE}.{os.getpid()}"
            staged.write_text(json.dumps(record))
            os.replace(staged, self.folder / HOLDER_FILE)

    def _stop_serving(self) -> None:
        """Before the shard closes: no more answers."""
        if self._server is not None:
            self._server.stop()
            self._server = None

    def _answer(self, meta: dict[str, Any], arrays: list[np.ndarray]
                ) -> tuple[dict[str, Any], list[np.ndarray]]:
        """One read another process asked for (``ReadServer``'s thread): its reply."""
        deadline = time.monotonic() + min(float(meta.get("wait_s", 0.0)), HELD_REPLY_S)
        with self._lock:
            while self._exclusive and self._shard is not None and not self._yielding:
                left = deadline - time.monotonic()
                if left <= 0:
                    return {"status": "held"}, []  # the caller waits, says so, asks again
                self._changed.wait(left)
            if self._shard is None or self._yielding or self._closed:
                return {"status": "moving"}, []  # handing over: the caller finds the next
            self._users += 1
            self._answering += 1
        try:
            reply, out = encode(answer(self._store, meta, arrays))
            return reply | {"status": "ok"}, out
        except NotServed:
            return {"status": "not served"}, []
        except StoreError as error:
            return {"status": "error", "kind": type(error).__name__, "message": str(error)}, []
        except Exception as error:
            log.exception("Could not answer a read of %s", self.folder)
            return {"status": "error", "message": f"The process holding the store at "
                    f"{self.folder} could not answer ({type(error).__name__}: {error})."}, []
        finally:
            self._done(answering=True)

    def _done(self, answering: bool) -> None:
        with self._lock:
            self._users -= 1
            self._answering -= answering
            self._changed.notify_all()

    def _acquire(self) -> Any:
        started = time.monotonic()
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
                self._waited(started)
        finally:
            if mine is not None:
                mine.unlink(missing_ok=True)

    def _waited(self, started: float, first: float | None = None) -> None:
        """One pause of a wait whose budget runs from ``started`` (and which began at
        ``first``): said once past ``NOTICE_AFTER_S``, ``StoreBusyError`` past ``wait_s``
        (or past ``HANDS_WAIT`` times that since ``first``)."""
        now = time.monotonic()
        first = started if first is None else first
        waited = now - first
        if now - started > self.wait_s or waited > HANDS_WAIT * self.wait_s:
            holder = self._holder_record()
            who = ("an ingest, the UI or a long optimise" if holder is None else
                   f"{holder['program']}, process {holder['pid']}")
            raise StoreBusyError(
                f"The store at {self.folder} is in use by another process ({who}) and was "
                f"not handed over within {self.wait_s:.0f} s. Try again when it finishes.")
        if waited > NOTICE_AFTER_S and str(self.folder) not in _noticed:
            _noticed.add(str(self.folder))
            holder = self._holder_record()
            who = ("another process" if holder is None else
                   f"process {holder['pid']} ({holder['program']})")
            print(f"Waiting for the store at {self.folder}: {who} is using it (at most "
                  f"{self.wait_s:.0f} s; TWINRANK_STORE_WAIT_S sets it).", file=sys.stderr,
                  flush=True)
        time.sleep(self.poll_s)

    def _holder_record(self) -> dict[str, Any] | None:
        """What ``FOLDER/.holder`` says of the process that holds the shard, if it runs."""
        try:
            record = json.loads((self.folder / HOLDER_FILE).read_text())
            pid = int(record["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return record if _runs(pid) else None

    def _try_open(self) -> Any:
        """The opened shard, or None when another process holds the folder's lock."""
        fd = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        self._lock_fd = fd
        self._say_holder(serves=self._serves())
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
            with contextlib.suppress(OSError):  # no longer the holder (see ``_say_holder``)
                (self.folder / HOLDER_FILE).unlink()
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
                if self._shard is not None:
                    self._yielding = bool(self._other_requests())  # a writer waits
                    if self._yielding:
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
    needed = space.copy_need(folder / shard_dir, Path(tempfile.gettempdir()))
    fits, free = space.needs_space(Path(tempfile.gettempdir()), needed)
    if not fits:
        raise StoreError(f"the temporary folder {tempfile.gettempdir()} has "
                         f"{space.human(free)} free, a copy needs about {space.human(needed)}")
    scratch = Path(tempfile.mkdtemp(prefix="twinrank-readonly-"))
    try:
        shutil.copytree(folder / shard_dir, scratch / shard_dir, copy_function=sparse_copy)
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


def sparse_copy(source: str, target: str) -> str:
    """Copy a file, leaving its zero blocks out (holes): Qdrant's files are mostly
    preallocated zeros (a 32 MB chunk file holding a few kB), so a copy takes about what
    they hold, not their size."""
    zeros = bytes(COPY_BLOCK)
    with open(source, "rb") as reader, open(target, "wb") as writer:
        while block := reader.read(COPY_BLOCK):
            if block == zeros[:len(block)]:
                writer.seek(len(block), os.SEEK_CUR)
            else:
                writer.write(block)
        writer.truncate()
    return target


def _alive(request_name: str) -> bool:
    """Whether the process that wrote this request file still runs."""
    try:
        return _runs(int(request_name.split("-")[1]))
    except (IndexError, ValueError):
        return False


def _runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _program() -> str:
    """What this process is, in a user's words: "twinrank ingest", "streamlit run"."""
    argv = sys.argv or [""]
    name = Path(argv[0]).name or "python"
    name = {"cli.py": "twinrank", "__main__.py": "twinrank", "-c": "python -c"}.get(name, name)
    verb = argv[1] if len(argv) > 1 and argv[1].isalpha() else ""
    return f"{name} {verb}".strip()

"""Reading a store another process holds: ask the holder over a Unix socket.

Qdrant Edge lets one process at a time open a collection folder (``store.lease``). Handing
the folder over costs a flush, a close and a reopen (0.1-0.2 s each); twenty searches
queued behind an ingest that way waited seconds each, and some gave up. So the process
that holds the folder (an ingest, the app, a search that found it free) also answers
*reads* for the others, on ``FOLDER/.serve.sock``:

- a store method marked ``@through_holder`` (search, count, tokens, vectors, payloads,
  pages of a scroll) runs here when this process holds the folder or can take it at once;
  otherwise its call (name and arguments) goes to the holder, which runs the very same
  method on its open store and sends the result back. Writes still ask for the folder;
- the messages are JSON plus raw array bytes (``encode``/``decode``): no pickle, so a
  peer cannot make the holder run code; only ``SERVED`` methods can be called;
- a holder answers only while it holds the folder: when it hands over or closes, its
  socket goes, callers retry, find the next holder (or the folder free) and go on.

Example:
    >>> from twinrank.store import EdgeStore
    >>> holder = EdgeStore.open("store")  # say, an ingest: it holds the folder
    >>> reader = EdgeStore.open("store")  # say, `twinrank search`: it reads through it
    >>> reader.search(query_vector, limit=3) == holder.search(query_vector, limit=3)
    True
    >>> holder.close()  # the holder goes: the next read finds the folder free, opens it
    >>> reader.count()
    6
    >>> reader.close()
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import fields, is_dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

import numpy as np

from twinrank.store.filters import SearchFilter
from twinrank.store.schema import SearchPlan, StoredHit, StoreError

SOCKET_FILE = ".serve.sock"
LENGTH = struct.Struct("<Q")
MAX_HEADER = 64 * 1024 * 1024  # bytes of JSON in one message
DTYPES = {"float16", "float32", "float64", "int64", "int32", "uint8", "bool"}
CLASSES: dict[str, type] = {"SearchFilter": SearchFilter, "SearchPlan": SearchPlan,
                            "StoredHit": StoredHit}
SERVED: set[str] = set()  # the methods a peer may call: those marked @through_holder
log = logging.getLogger(__name__)
T = TypeVar("T")


class HolderGone(Exception):
    """No holder answered (none yet, it went, or it is handing over): wait and try again."""


class NotServed(Exception):
    """The holder answers no such read (another twinrank version): ask for the folder."""


class Reads(Protocol):
    """What ``through_holder`` needs of a store: its lease (a ``ShardLease``)."""

    @property
    def _lease(self) -> Any: ...


def through_holder(method: Callable[..., T]) -> Callable[..., T]:
    """Mark a read: run it here when this process holds the folder or can take it now,
    else have the process holding it run it (``ShardLease.read``)."""
    SERVED.add(method.__name__)

    @functools.wraps(method)
    def read(self: Reads, *args: Any, **kwargs: Any) -> T:
        return cast(T, self._lease.read(lambda: method(self, *args, **kwargs),
                                        lambda link: link.call(method.__name__, args, kwargs)))

    return read


def answer(store: object, meta: dict[str, Any], arrays: list[np.ndarray]) -> Any:
    """Run one call a peer sent (the holder's side); its result, to send back."""
    request = decode(meta, arrays)
    name = request.get("method")
    if name not in SERVED:
        raise NotServed(f"{name!r} is not a read this twinrank answers for others")
    return getattr(store, name)(*request["args"], **request["kwargs"])


# the wire: 8 bytes of length, JSON, then the arrays' raw bytes


def encode(value: Any) -> tuple[dict[str, Any], list[np.ndarray]]:
    """``value`` as JSON-able data plus the arrays it holds, in order."""
    arrays: list[np.ndarray] = []

    def packed(item: Any) -> Any:
        if isinstance(item, np.ndarray):
            arrays.append(np.ascontiguousarray(item))
            return {"$array": len(arrays) - 1}
        if isinstance(item, np.generic):
            return item.item()
        if type(item) is StoredHit:  # a payload is JSON as Qdrant stores it: sent as is
            return {"$hit": [item.id, item.score, item.payload]}
        if is_dataclass(item) and not isinstance(item, type):
            name = type(item).__name__
            if CLASSES.get(name) is not type(item):
                raise TypeError(f"{name} does not cross the socket")
            return {"$class": name,
                    "fields": {f.name: packed(getattr(item, f.name)) for f in fields(item)}}
        if isinstance(item, datetime):
            return {"$datetime": item.isoformat()}
        if isinstance(item, date):
            return {"$date": item.isoformat()}
        if isinstance(item, dict):
            return {"$dict": [[str(k), packed(v)] for k, v in item.items()]}
        if isinstance(item, tuple):
            return {"$tuple": [packed(v) for v in item]}
        if isinstance(item, list):
            return [packed(v) for v in item]
        if item is None or isinstance(item, bool | int | float | str):
            return item
        raise TypeError(f"{type(item).__name__} does not cross the socket")

    return {"value": packed(value)}, arrays


def decode(meta: dict[str, Any], arrays: list[np.ndarray]) -> Any:
    """What ``encode`` was given."""

    def unpacked(item: Any) -> Any:
        if isinstance(item, list):
            return [unpacked(v) for v in item]
        if not isinstance(item, dict):
            return item
        if "$array" in item:
            return arrays[item["$array"]]
        if "$hit" in item:
            return StoredHit(*item["$hit"])
        if "$class" in item:
            return CLASSES[item["$class"]](**{k: unpacked(v) for k, v in item["fields"].items()})
        if "$datetime" in item:
            return datetime.fromisoformat(item["$datetime"])
        if "$date" in item:
            return date.fromisoformat(item["$date"])
        if "$tuple" in item:
            return tuple(unpacked(v) for v in item["$tuple"])
        return {k: unpacked(v) for k, v in item["$dict"]}

    return unpacked(meta["value"])


def send(sock: socket.socket, meta: dict[str, Any], arrays: list[np.ndarray]) -> None:
    meta = meta | {"arrays": [[a.dtype.name, list(a.shape)] for a in arrays]}
    header = json.dumps(meta, separators=(",", ":")).encode()
    sock.sendall(LENGTH.pack(len(header)) + header)
    for array in arrays:
        sock.sendall(array.tobytes())


def receive(sock: socket.socket) -> tuple[dict[str, Any], list[np.ndarray]]:
    """One message; ``HolderGone`` when the peer closed the connection."""
    (length,) = LENGTH.unpack(_exactly(sock, LENGTH.size))
    if length > MAX_HEADER:
        raise StoreError(f"a message of {length} bytes on the store's socket")
    meta = json.loads(_exactly(sock, length))
    arrays = []
    for dtype, shape in meta.pop("arrays"):
        if dtype not in DTYPES:
            raise StoreError(f"an array of {dtype} on the store's socket")
        kind = np.dtype(dtype)
        size = kind.itemsize * int(np.prod(shape, dtype=np.int64))
        arrays.append(np.frombuffer(_exactly(sock, size), kind).reshape(shape))
    return meta, arrays


def _exactly(sock: socket.socket, size: int) -> bytearray:
    data = bytearray(size)
    view, got = memoryview(data), 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            raise HolderGone("the holder closed the connection")
        got += n
    return data


def _error(kind: str, message: str) -> StoreError:
    """The holder's error as the same ``StoreError`` kind (``DamagedStoreError``...)."""
    kinds, found = [StoreError], StoreError
    while kinds:
        cls = kinds.pop()
        if cls.__name__ == kind:
            found = cls
        kinds += cls.__subclasses__()
    try:
        return found(message)
    except TypeError:  # a kind that wants more than a message
        return StoreError(message)


@contextlib.contextmanager
def address(folder: Path) -> Iterator[str]:
    """The socket's path: in the folder, reached through ``/proc/self/fd`` when the folder's
    own path is too long for a Unix socket address (108 bytes)."""
    path = str(folder / SOCKET_FILE)
    if len(path.encode()) < 100:
        yield path
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{SOCKET_FILE}"
    finally:
        os.close(fd)


class ReadServer:
    """The holder's side: answers peers' calls on ``FOLDER/.serve.sock`` until ``stop``.

    ``serve(meta, arrays)`` runs one call and returns the reply (``meta``, ``arrays``);
    each connection has its own thread, so one slow caller does not hold up the others.
    """

    def __init__(self, folder: Path,
                 serve: Callable[[dict[str, Any], list[np.ndarray]],
                                 tuple[dict[str, Any], list[np.ndarray]]]) -> None:
        self.folder = folder
        self._serve = serve
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._peers: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopped = False
        with address(folder) as path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # a killed holder's; we hold the folder's lock
            self._listener.bind(path)
            os.chmod(path, os.stat(folder).st_mode & 0o666)  # who may write, may ask
        self._listener.listen(64)
        threading.Thread(target=self._accept, name="twinrank-serve", daemon=True).start()

    def stop(self) -> None:
        """Stop answering: callers get ``HolderGone`` and look for the next holder."""
        with self._lock:
            self._stopped = True
            peers, self._peers = self._peers, set()
        with address(self.folder) as path, contextlib.suppress(OSError):
            os.unlink(path)
        for sock in [self._listener, *peers]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self) -> None:
        while True:
            try:
                peer, _ = self._listener.accept()
            except OSError:
                return  # stopped
            with self._lock:
                if self._stopped:
                    peer.close()
                    return
                self._peers.add(peer)
            threading.Thread(target=self._talk, args=(peer,), name="twinrank-serve-peer",
                             daemon=True).start()

    def _talk(self, peer: socket.socket) -> None:
        try:
            while True:
                meta, arrays = receive(peer)
                send(peer, *self._serve(meta, arrays))
        except (HolderGone, OSError):
            pass
        except Exception:  # a malformed message: drop that caller, keep serving
            log.exception("A caller on %s sent what it could not answer", self.folder)
        finally:
            with self._lock:
                self._peers.discard(peer)
            peer.close()


class HolderLink:
    """The caller's side: one connection to whichever process holds the folder now."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self.timeout_s = 15.0  # the caller's remaining wait, set before each call

    def call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The holder's result of ``method(*args, **kwargs)``; ``HolderGone`` when no holder
        answers, ``NotServed`` when it answers no such read, ``StoreError`` when the holder's
        method raised (its kind and message kept)."""
        meta, arrays = encode({"method": method, "args": args, "kwargs": kwargs})
        with self._lock:
            try:
                sock = self._connected()
                sock.settimeout(max(self.timeout_s, 0.5))
                send(sock, meta | {"wait_s": self.timeout_s}, arrays)
                reply, out = receive(sock)
            except (OSError, HolderGone) as error:
                self.close()
                raise HolderGone(str(error)) from None
        status = reply.get("status")
        if status == "ok":
            return decode(reply, out)
        if status == "error":
            raise _error(reply.get("kind", ""), reply["message"])
        if status == "not served":
            raise NotServed(method)
        raise HolderGone(str(status))  # handing over, or held for a step (``ShardLease``)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _connected(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                with address(self.folder) as path:
                    sock.connect(path)
            except OSError:
                sock.close()
                raise
            self._sock = sock
        return self._sock

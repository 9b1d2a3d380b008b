"""Ordered read-ahead on worker threads, with a per-item deadline.

Decoding runs ahead of the model on a few threads (Pillow and hashlib release the GIL), so
while the model embeds batch n the workers already read, hash and decode batch n+1.
Results come back in input order. An item that takes longer than ``timeout`` seconds (a
pathological file, a stalled network share) is given up on: it comes back as a
``TimeoutError``, its thread is left to finish alone (it is a daemon, so it never holds up
the exit) and a fresh thread takes its place, so one bad file can never hang a run.

``close`` joins the workers. This matters beyond tidiness: a worker that outlives the run
may drop the last reference to ``fn`` (and the model tensors it closes over) while Python
shuts down, and torch then aborts the process ("terminate called without an active
exception") after the run has succeeded.
"""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")
POLL_S = 0.25
JOIN_S = 5.0  # how long ``close`` waits for a worker still busy with one file


class _Task(Generic[T, R]):
    __slots__ = ("item", "future", "started", "abandoned", "thread")

    def __init__(self, item: T) -> None:
        self.item = item
        self.future: Future[R | BaseException] = Future()
        self.started: float | None = None
        self.abandoned = False
        self.thread: threading.Thread | None = None


class ReadAheadPool(Generic[T, R]):
    """Runs ``fn`` over items on ``workers`` daemon threads; ``map`` yields in order.

    Example:
        >>> from twinrank.models.images import open_image
        >>> paths = [Path("photos/2021/a0.png"), Path("missing.png")]
        >>> with ReadAheadPool(open_image, workers=2, timeout=60) as pool:
        ...     for path, result in pool.map(paths, read_ahead=64):
        ...         print(path, type(result).__name__)  # fn(path), or what it raised
        photos/2021/a0.png PngImageFile
        missing.png ImageReadError
    """

    def __init__(
        self, fn: Callable[[T], R], workers: int = 2, timeout: float = 60.0, nice: int = 0
    ) -> None:
        self.fn = fn
        self.timeout = timeout
        self.nice = nice
        self.timed_out = 0
        self._queue: queue.Queue[_Task[T, R] | None] = queue.Queue()
        self._closed = False
        self._abandoned: set[threading.Thread] = set()
        self._open = threading.Event()  # cleared while ``paused``: workers take no new item
        self._open.set()
        self._threads = [self._start_worker() for _ in range(max(1, workers))]

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Workers start no new item inside this block (one already started finishes).

        Ingest pauses decoding while the model runs when both would share too few cores:
        a decode thread that preempts one of torch's threads stalls the others at their
        next barrier, and decoding in the model's gaps instead was faster (measured in
        ``bench/ingest_bench.py``).
        """
        self._open.clear()
        try:
            yield
        finally:
            self._open.set()

    def map(
        self, items: Iterable[T], read_ahead: int = 64
    ) -> Iterator[tuple[T, R | BaseException]]:
        source = iter(items)
        pending: collections.deque[_Task[T, R]] = collections.deque()

        def submit() -> None:
            for item in source:
                task: _Task[T, R] = _Task(item)
                pending.append(task)
                self._queue.put(task)
                return

        for _ in range(max(1, read_ahead)):
            submit()
        while pending:
            task = pending.popleft()
            result = self._wait(task)
            submit()
            yield task.item, result

    def close(self) -> None:
        """Stop the workers and wait for them (a worker stuck on a hung file is left)."""
        self._closed = True
        for _ in self._threads:
            self._queue.put(None)
        deadline = time.monotonic() + JOIN_S
        for thread in self._threads:
            if thread not in self._abandoned:
                thread.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> ReadAheadPool[T, R]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _wait(self, task: _Task[T, R]) -> R | BaseException:
        while True:
            try:
                return task.future.result(timeout=POLL_S)
            except FutureTimeout:
                started = task.started
                if started is not None and time.monotonic() - started > self.timeout:
                    task.abandoned = True
                    if task.thread is not None:
                        self._abandoned.add(task.thread)
                    self.timed_out += 1
                    self._threads.append(self._start_worker())
                    return TimeoutError(f"gave up after {self.timeout:g} s")

    def _start_worker(self) -> threading.Thread:
        thread = threading.Thread(target=self._work, name="twinrank-decode", daemon=True)
        thread.start()
        return thread

    def _work(self) -> None:
        if self.nice:
            _lower_priority(self.nice)
        while True:
            self._open.wait()
            task = self._queue.get()
            if task is None:
                return
            if self._closed:
                task.future.set_result(RuntimeError("pool closed"))
                continue
            task.thread = threading.current_thread()
            task.started = time.monotonic()
            try:
                result: R | BaseException = self.fn(task.item)
            except BaseException as error:  # noqa: BLE001  (a worker must never die)
                result = error
            task.future.set_result(result)
            if task.abandoned:  # a replacement took this thread's place
                return


def _lower_priority(nice: int) -> None:
    """Make the calling thread yield the CPU to the model's threads (Linux: per thread).

    On a machine with few cores, a decode thread that preempts one of the model's
    threads stalls all of them at the next barrier; a niced decoder runs in their gaps.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (AttributeError, OSError):  # not Linux, or not allowed: run at normal priority
        pass

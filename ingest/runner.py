"""The ingest runner: walk -> plan -> read+hash+decode (threads) -> embed -> write.

Work is planned before anything is read (``plan``): unchanged files are never opened.
Worker threads read each remaining file once, hash it and, unless its content is already
stored, decode and preprocess it, running ahead of the model so that decoding batch n+1
overlaps the forward pass of batch n. The content hash then decides, in input order:
a new image (embed it), a known image under a new name (moved or duplicate: add the path,
no model work), or a changed file (its old point loses the path).

Crash safety: point ids come from file content, so re-writing a point is idempotent, and
every store operation is a single atomic update (Qdrant's write-ahead log replays it after
a crash, ``kill -9`` included). A run killed at any moment loses only the batch in
flight, and the next run redoes exactly what is missing, with no duplicate points.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from twinrank.ingest.plan import Candidate, StoreIndex, note_gone, plan_run, prune_gone
from twinrank.ingest.pool import ReadAheadPool
from twinrank.ingest.progress import IngestProgress
from twinrank.ingest.report import IngestReport
from twinrank.ingest.walk import WalkOptions
from twinrank.ingest.write import (
    FileFacts,
    ImageFacts,
    IngestDiskFull,
    add_path,
    build_payload,
    make_record,
    remove_paths,
)
from twinrank.models.images import (
    MAX_FILE_BYTES,
    MAX_PIXELS,
    DecodeError,
    ImageReadError,
    decode_image,
    printable,
    read_hashed,
)
from twinrank.store import PointRecord, VectorStore, point_id_for
from twinrank.store.space import DiskFullError

if TYPE_CHECKING:
    from twinrank.models.encode import ImageEmbedder

__all__ = ["IngestConfig", "IngestReport", "run_ingest"]


DECODE_DURING_FORWARD_ENV = "TWINRANK_DECODE_DURING_FORWARD"  # "1": never pause decoders
# A run that only rewrote payloads says it rebuilds the index when it rewrote at least one
# point in this many: fewer leave the index as it was (Qdrant rebuilds nothing for 1%)
REWRITES_ANNOUNCED = 10


@dataclass(frozen=True)
class IngestConfig:
    """How to ingest one folder (see ``twinrank ingest --help`` for each option)."""

    root: Path
    batch_size: int = 32
    workers: int = 2  # decode threads
    include_hidden: bool = False
    precision: str = "auto"
    progress: bool = True
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    follow_links: bool = True
    prune: bool = False
    decode_timeout: float = 60.0  # seconds per file before it is skipped as hung
    max_pixels: int = MAX_PIXELS
    max_file_bytes: int = MAX_FILE_BYTES  # larger files are refused from their size, unread
    read_ahead: int = 0  # files decoded ahead of the model; 0: two batches
    decode_nice: int = 10  # decode threads yield the CPU to the model's threads; 0: don't
    flush_every_s: float = 30.0  # flush segments this often (the WAL covers what is between)
    cache_tokens: bool = True  # store the reranker's image tokens (False: rerank reads files)

    def walk_options(self) -> WalkOptions:
        return WalkOptions(self.include, self.exclude, self.include_hidden, self.follow_links)


@dataclass
class Loaded:
    """What a worker made of one candidate: its identity and, if new, model-ready pixels."""

    facts: FileFacts
    image: ImageFacts | None = None
    pixels: np.ndarray | None = None  # (H, W, 3) uint8, ready for the model


def run_ingest(
    config: IngestConfig,
    embedder: ImageEmbedder | Callable[[], ImageEmbedder],
    store: VectorStore,
    report: IngestReport | None = None,
) -> IngestReport:
    """Bring ``store`` up to date with the images under ``config.root``.

    ``embedder`` may be a function that makes one: it is called only when the plan finds
    files to read, so a re-run over unchanged files loads no model (and no torch).
    Pass ``report`` to keep the counts of a run that ends early (Ctrl+C, an error).

    Example:
        >>> from twinrank.models.encode import ImageEmbedder
        >>> from twinrank.store import open_store
        >>> store = open_store("new.twinrank", info)  # info: what the model's vectors are
        >>> report = run_ingest(IngestConfig(Path("photos"), progress=False),
        ...                     ImageEmbedder(model), store)
        >>> print(report.summary())
        added 6, updated 0, unchanged 0, moved 0, duplicates 0, pruned 0, failed 0 in ...
        >>> store.close()
    """
    started = time.perf_counter()
    report = report if report is not None else IngestReport()
    root = Path(os.path.abspath(config.root.expanduser()))
    index = StoreIndex.load(store)
    plan = plan_run(root, config.walk_options(), index, report)
    if not plan.seen and not config.prune:  # (--prune says why it prunes nothing)
        report.notes.append(f"No image files found under {root}.")
    report.add_time("walk", time.perf_counter() - started)
    progress = IngestProgress.for_collection(len(plan.candidates), config.progress,
                                             store.info.model_source, store.info.model_pretrained)
    read_ahead = config.read_ahead or 2 * config.batch_size
    try:
        if plan.candidates:
            if callable(embedder):
                began = time.perf_counter()
                embedder = embedder()  # the model loads now, when something needs it
                report.add_time("model", time.perf_counter() - began)
            report.precision = str(embedder.dtype).removeprefix("torch.")
            progress.model_ready(on_cpu=embedder.device.type == "cpu")
            load = _loader(embedder, index, config.max_pixels, config.max_file_bytes)
            writer = _Writer(config, embedder, store, index, report, load,
                             planned=len(plan.candidates))
            writer.check_room()  # before anything is read: one batch must fit
            with ReadAheadPool(load, config.workers, config.decode_timeout,
                               nice=config.decode_nice) as pool:
                if _share_cores(embedder, config.workers):
                    writer.model_running = pool.paused
                waited = time.perf_counter()
                for candidate, result in pool.map(plan.candidates, read_ahead):
                    report.add_time("wait", time.perf_counter() - waited)
                    writer.handle(candidate, result)
                    progress.advance(report.embedded)
                    waited = time.perf_counter()
                writer.write_batch()
        if config.prune:
            prune_gone(root, plan, index, store, report)
        else:
            note_gone(root, plan, index, store, report)
    finally:
        progress.close()
        store.flush()
        report.seconds = time.perf_counter() - started
    pair_folders_and_types(store, report)
    if not callable(embedder):  # images were embedded: index them, measure text search
        finish_collection(embedder.text_model, store, report, config.progress)
    elif report.payloads_rewritten:  # read nothing, yet --prune rewrote payloads
        # Qdrant moved those points out of the index: put them back (nothing to do for a
        # few; bench/results/payload_rewrite.json); the build is announced when it is large
        build_index(store, report, config.progress and
                    report.payloads_rewritten * REWRITES_ANNOUNCED >= store.count())
    report.seconds = time.perf_counter() - started
    return report


def finish_collection(text_model: Callable[[], object], store: VectorStore,
                      report: IngestReport, progress: bool = False) -> None:
    """After new images are written: build the search index where exact search no longer
    applies (``build_index``), then measure text search if it is due (``text_model``
    gives the model whose text side encodes the captions; it is called only then)."""
    build_index(store, report, progress)
    measure_text_search(text_model, store, report)


def pair_folders_and_types(store: VectorStore, report: IngestReport) -> None:
    """Upgrade a collection an older twinrank made, so a filter on a folder and file types
    is one keyword match (``StoreBase.pair_folders_and_types``), when that is cheap: under
    ``EXACT_SEARCH_BELOW`` images, where there is no search index to lose. Qdrant moves
    every point whose payload is rewritten out of its index, so a larger collection's index
    would be rebuilt (as long as its first build); ingest leaves that to ``twinrank
    upgrade`` (``upgrade_collection``) and says so in a note."""
    from twinrank.store import schema

    upgrade = getattr(store, "pair_folders_and_types", None)
    if upgrade is None or store.info.folder_formats:
        return
    if store.count() >= schema.EXACT_SEARCH_BELOW:
        report.notes.append(
            "This collection was made by an older twinrank: a search by folder and --type "
            "checks each image's type (correct, about 2x slower at 1M images). `twinrank "
            "upgrade` makes it one match; it rebuilds the search index, which takes as "
            "long as the first build did.")
        return
    began = time.perf_counter()
    paired = upgrade()
    report.add_time("pairs", time.perf_counter() - began)
    report.notes.append(f"Upgraded the collection: {paired:,} images made by an older twinrank "
                        f"now carry their folder-and-type pairs, so a search by folder and "
                        f"--type is one match.")


def upgrade_collection(store: VectorStore, progress: bool = False) -> str:
    """What ``twinrank upgrade`` does: bring a collection an older twinrank made up to
    date (its folder-and-type pairs, ``StoreBase.pair_folders_and_types``), then rebuild
    an embedded store's search index, since Qdrant moved every rewritten point out of it
    (a server rebuilds its own in the background). Safe to interrupt: run it again; on an
    up-to-date collection it only finishes an index build left undone. Returns one line
    for the user.

    Example:
        >>> print(upgrade_collection(store))
        The collection is up to date (6 images).
    """
    started = time.perf_counter()
    upgrade = getattr(store, "pair_folders_and_types", None)
    paired = upgrade() if upgrade is not None else 0
    report = IngestReport()
    build_index(store, report, progress and bool(paired))  # else a no-op, or a build's end
    if not paired:
        return f"The collection is up to date ({store.count():,} images)."
    built = report.stage_seconds.get("index")
    return (f"Upgraded the collection in {time.perf_counter() - started:.1f} s: {paired:,} "
            f"images now carry their folder-and-type pairs, so a search by folder and --type "
            f"is one match" + (f" (search index rebuilt in {built:.1f} s)." if built else "."))


def build_index(store: VectorStore, report: IngestReport, progress: bool = False) -> None:
    """Have an embedded store build its HNSW graphs (and merge segments) once it holds
    ``EXACT_SEARCH_BELOW`` images or more: Qdrant Edge builds them only when asked, and
    without them every search is a scan. A server builds its own in the background."""
    from twinrank.store import schema

    optimize = getattr(store, "optimize", None)
    if optimize is None or store.count() < schema.EXACT_SEARCH_BELOW:
        return
    if progress:  # minutes at 100k+ images (about 35 at 1M on 2 cores), with no bar
        tqdm.write(f"Building the search index for {store.count():,} images "
                   f"(HNSW graphs; minutes for a large collection)...")
    began = time.perf_counter()
    optimize()
    report.add_time("index", time.perf_counter() - began)


def measure_text_search(text_model: Callable[[], object], store: VectorStore,
                        report: IngestReport) -> None:
    """Choose, by measurement, how text queries search a collection that crosses the
    modality gap (``store.calibrate_text_search``): at 20k images, then each time it has
    doubled. Searches the model's encodings of ``models.gap.CALIBRATION_CAPTIONS``; a note
    says what won."""
    from twinrank.store import calibration_due

    calibrate = getattr(store, "calibrate_text_search", None)
    if calibrate is None or not calibration_due(store.info, store.count()):
        return
    from twinrank.models.gap import CALIBRATION_CAPTIONS, caption_vectors

    began = time.perf_counter()
    measured = calibrate(caption_vectors(text_model(), CALIBRATION_CAPTIONS))
    report.add_time("text search measured", time.perf_counter() - began)
    if measured is not None:
        report.notes.append(measured.summary())


def _loader(
    embedder: ImageEmbedder, index: StoreIndex, max_pixels: int, max_file_bytes: int
) -> Callable[[Candidate], Loaded]:
    """The worker's job for one candidate: read once (hashed while streaming, refused
    from ``stat`` when over ``max_file_bytes``), and decode only if the content is new."""
    target = embedder.target_size

    def load(candidate: Candidate) -> Loaded:
        _check_name(candidate.path)
        data, digest = read_hashed(candidate.path, max_file_bytes)
        facts = FileFacts(candidate.path, len(data), candidate.mtime_ns, digest)
        if point_id_for(digest) in index.point_ids:
            return Loaded(facts)
        decoded = decode_image(data, target, max_pixels, max_file_bytes)
        image = ImageFacts(decoded.width, decoded.height, decoded.format, decoded.captured_at)
        return Loaded(facts, image, embedder.prepare(decoded.image))

    return load


@dataclass
class _Writer:
    """Turns worker results, in order, into store updates and counts."""

    config: IngestConfig
    embedder: ImageEmbedder
    store: VectorStore
    index: StoreIndex
    report: IngestReport
    load: Callable[[Candidate], Loaded]
    batch: list[Loaded] = field(default_factory=list)
    batch_ids: dict[str, int] = field(default_factory=dict)  # point id -> slot in batch
    also_at: dict[str, list[FileFacts]] = field(default_factory=dict)
    flushed_at: float = field(default_factory=time.monotonic)
    # entered around each forward: the pool's ``paused`` where decoding and the model
    # would share too few cores (``_share_cores``), else nothing
    model_running: Callable[[], contextlib.AbstractContextManager[None]] = \
        contextlib.nullcontext
    planned: int = 0  # candidates in the plan, and how many were handled: what is left
    handled: int = 0

    @property
    def root(self) -> str:
        return os.path.abspath(self.config.root.expanduser())

    def handle(self, candidate: Candidate, result: Loaded | BaseException) -> None:
        self.handled += 1
        path = candidate.path.as_posix()
        if isinstance(result, BaseException):
            self.report.fail(path, _reason(result))
            return
        facts = result.facts
        if facts.mtime_ns < 0:  # the plan could not stat it, yet it was read: stat again
            facts = _restat(facts)
        point_id = point_id_for(facts.content_hash)
        previous = candidate.previous
        if previous is not None and previous.point_id == point_id:
            self._attach(point_id, facts)  # touched, same bytes: refresh size and mtime
            self.report.unchanged += 1
            return
        if previous is not None:  # the file changed: its old point loses this path
            self._detach(previous.point_id, path)
        if point_id in self.batch_ids:
            self.also_at.setdefault(point_id, []).append(facts)
            self._count(previous, "duplicates")
        elif point_id in self.index.point_ids:
            moved = self._attach(point_id, facts)
            self._count(previous, "moved" if moved else "duplicates")
        elif result.pixels is None or result.image is None:
            self._decode_late(candidate)  # its point was deleted after the worker looked
        else:
            self.batch_ids[point_id] = len(self.batch)
            self.batch.append(Loaded(facts, result.image, result.pixels))
            if len(self.batch) >= self.config.batch_size:
                self.write_batch()

    def _decode_late(self, candidate: Candidate) -> None:
        try:
            result = self.load(candidate)
        except Exception as error:  # noqa: BLE001  (reported, never fatal)
            self.report.fail(candidate.path.as_posix(), _reason(error))
            return
        self.handle(candidate, result)

    def write_batch(self) -> None:
        if not self.batch:
            return
        self.check_room(len(self.batch))  # before the forward: a full disk wastes none
        began = time.perf_counter()
        with self.model_running():
            vectors, tokens = self.embedder.embed_arrays(
                [item.pixels for item in self.batch if item.pixels is not None])
        embedded = time.perf_counter()
        records: list[PointRecord] = []
        known = []
        for item, vector, token in zip(self.batch, vectors, tokens, strict=True):
            point_id = point_id_for(item.facts.content_hash)
            assert item.image is not None
            payload = build_payload(item.facts, item.image)
            for other in self.also_at.pop(point_id, []):
                payload = add_path(payload, other)
            keep = self.config.cache_tokens and self.store.info.token_count > 0
            records.append(make_record(point_id, vector, token if keep else None, payload))
            known.append(self.index.files.get(item.facts.path.as_posix()))
        try:
            self.store.upsert(records)
        except DiskFullError as full:  # checked by the store itself, with these payloads
            raise IngestDiskFull(full, self.report, self.left()) from None
        for previous in known:
            self._count(previous, "added")
        if time.monotonic() - self.flushed_at > self.config.flush_every_s:
            self.store.flush()
            self.flushed_at = time.monotonic()
        self.index.point_ids.update(self.batch_ids)
        self.report.embedded += len(records)
        self.batch, self.batch_ids = [], {}
        self.report.add_time("embed", embedded - began)
        self.report.add_time("write", time.perf_counter() - embedded)

    def check_room(self, images: int | None = None) -> None:
        """Stop the run (``IngestDiskFull``: one sentence, then the report) unless the
        store's disk has room for ``images`` more (default: one batch of what is left)."""
        if images is None:
            images = min(self.config.batch_size, max(1, self.planned))
        try:
            self.store.ensure_room(images)
        except DiskFullError as full:
            raise IngestDiskFull(full, self.report, self.left()) from None

    def left(self) -> int:
        """Images still to be written: the batch, and the candidates not handled yet."""
        return len(self.batch) + max(0, self.planned - self.handled)

    def _count(self, previous: object | None, outcome: str) -> None:
        """``outcome`` for a new path; a path the store knew with other content is updated."""
        if previous is not None:
            self.report.updated += 1
        else:
            setattr(self.report, outcome, getattr(self.report, outcome) + 1)

    def _attach(self, point_id: str, facts: FileFacts) -> bool:
        """Add (or refresh) a path on a stored point; drop its gone paths under the root.

        Returns True when some old path was gone: the file was moved, not copied. Only a
        path under the folder being ingested (which this run just walked) is dropped: one
        elsewhere may be on a drive that is merely unplugged, and only ``--prune`` of that
        folder may forget it.
        """
        payload = self.store.get_payloads([point_id]).get(point_id)
        if payload is None:
            return False
        path = facts.path.as_posix()
        gone = {p for p in payload.get("paths", [])
                if p != path and _under(p, self.root) and not os.path.lexists(p)}
        updated = add_path(payload, facts)
        self.store.set_payload(point_id, remove_paths(updated, gone) or updated)
        self.report.payloads_rewritten += 1
        return bool(gone)

    def _detach(self, point_id: str, path: str) -> None:
        payload = self.store.get_payloads([point_id]).get(point_id)
        if payload is None:
            return
        remaining = remove_paths(payload, {path})
        if remaining is None:
            self.store.delete([point_id])
            self.index.point_ids.discard(point_id)
        else:
            self.store.set_payload(point_id, remaining)
            self.report.payloads_rewritten += 1


def _share_cores(embedder: ImageEmbedder, workers: int) -> bool:
    """Whether decode threads and the model's CPU threads would share too few cores.

    ``TWINRANK_DECODE_DURING_FORWARD=1`` decodes alongside the forward regardless (the
    benchmark's baseline)."""
    if os.environ.get(DECODE_DURING_FORWARD_ENV) == "1":
        return False
    if embedder.device.type != "cpu":
        return False  # the forward runs on the accelerator; the cores are the decoders'
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        (os.cpu_count() or 1)
    return torch.get_num_threads() + workers > cores


def _check_name(path: Path) -> None:
    """``DecodeError`` for a path that is not valid UTF-8 (bytes Python keeps as surrogates):
    the store keeps paths as text, and one such name would fail the whole batch's write."""
    try:
        path.as_posix().encode("utf-8")
    except UnicodeEncodeError:
        reason = ("its name is not valid UTF-8, and the store keeps names as text; rename it "
                  "(e.g. convmv -f latin1 -t utf8)")
        raise DecodeError(f"Cannot index {printable(path.as_posix())}: {reason}.",
                          reason) from None


def _under(path: str, root: str) -> bool:
    """Whether ``path`` is ``root`` itself or inside it."""
    return path == root or path.startswith(root.rstrip("/") + "/")


def _restat(facts: FileFacts) -> FileFacts:
    try:
        info = facts.path.stat()
    except OSError:
        return facts
    return FileFacts(facts.path, info.st_size, info.st_mtime_ns, facts.content_hash)


def _reason(error: BaseException) -> str:
    if isinstance(error, ImageReadError):
        return error.reason
    if isinstance(error, TimeoutError):
        return f"decoding took too long ({error}); skipped"
    if isinstance(error, MemoryError):
        return "not enough memory to decode it"
    return f"unexpected error while reading: {type(error).__name__}: {error}"

"""Ingest on Ray Data: today's stages, spread over a cluster (``--engine ray``).

The same semantics as the in-process runner, because it *is* the runner's stages:

- on the driver: the store's index and the plan (``plan.plan_run``, or the files of a list);
  nothing unchanged is ever read;
- CPU tasks: the runner's read stage (``runner._loader``: read once, hash, decode only
  content the store does not hold) under its read-ahead pool, so the per-file timeout holds;
- an actor pool: one model copy per actor (``ImageEmbedder``, the same precision rules),
  ``--actors`` of them, ``--gpus-per-actor`` each; Ray restarts a killed actor and retries
  its batch (Ray Data's actor-pool defaults: ``max_restarts=-1``, ``max_task_retries=-1``);
- on the driver again, in plan order: the runner's writer (new, moved, duplicate, changed;
  one batched upsert per ``batch_size``), then ``--prune``.

Writes happen on the driver (the embedded store allows one writer, and the moved and
duplicate decisions need one place in plan order). Per image the driver receives the
vector and the cached tokens (2 kB + 8 kB for ViT-B-32) and sends them on to the store;
one driver measured a few hundred points a second (docs/scale.md: enough for a CPU
cluster of tens of cores, not for a GPU; past that, one driver per part of the list).
Point ids come from content, so a batch written twice is one point, not two: a retried
actor batch or a killed driver (run the command again) leaves nothing lost or duplicated.

Known content is not decoded: tasks get the stored ids' first 8 bytes as one sorted array
(8 bytes per point, shared through Ray's object store). A 64-bit prefix collision would only
skip a decode, and the writer then decodes that file itself (its late-decode path).

Ray itself is imported only inside the functions that run the pipeline, so importing
this module (the CLI does, for its options) loads no Ray; the in-process ingest never
touches Ray (a test checks ``sys.modules``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
from tqdm import tqdm

from twinrank.ingest.job import IngestJob, recorded_run, settle_token_cache
from twinrank.ingest.plan import Candidate, Plan, StoreIndex, plan_run, prune_gone
from twinrank.ingest.ray_stages import (
    EmbedActor,
    ModelSpec,
    PrecomputedEmbedder,
    ReadStage,
    known_prefixes,
    read_batch,
)
from twinrank.ingest.report import IngestReport
from twinrank.ingest.runner import (
    IngestConfig,
    Loaded,
    _loader,
    _Writer,
    finish_collection,
    pair_folders_and_types,
)
from twinrank.ingest.sources import is_source_list, plan_list, read_source_list
from twinrank.ingest.write import FileFacts, ImageFacts
from twinrank.models.encode import ImageEmbedder
from twinrank.models.images import DecodeError
from twinrank.models.presets import DEFAULT_PRESET
from twinrank.models.presets import resolve as resolve_preset
from twinrank.store import (
    ClusterLayout,
    CollectionInfo,
    StoreError,
    VectorStore,
    open_store,
    read_info,
)


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the Ray job runs (``twinrank ingest --engine ray --help``)."""

    address: str | None = None  # None: start a local Ray; "auto" or "ray://HOST:10001"
    actors: int = 1  # embedding actors, one model copy each
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0  # Ray's CPU reservation; torch threads: ``model_threads``
    model_threads: int | None = None  # torch threads per actor; None: torch's default
    files_per_task: int = 16  # files one read task reads, hashes and decodes
    read_cpus: float = 1.0  # CPUs a read task reserves
    local_cpus: int | None = None  # num_cpus of a Ray started here (None: all cores)
    source_list: bool = False  # SOURCE is a list of paths, whatever its suffix


BatchHook = Callable[[dict[str, np.ndarray]], None]
# Memory a read task reserves: its worker peaked at 577 MiB in bench/ray_ingest_bench.py
# (the imports are most of it; each decode thread holds one image at full size). Also
# what keeps Ray Data from fusing the read tasks into the actors, which it does when two
# stages ask for the same resources: decoding would then run on the model's CPUs (or
# next to its GPU) serially with the forward pass instead of on every CPU of the cluster.
READ_TASK_MEMORY = 768 * 1024 * 1024
# Seconds the workers report per row -> the report's stage names (summed over workers:
# wall-clock and CPU seconds of the read tasks and the actors, and the actors' start-up).
WORKER_TIMES = {"read_s": "read_tasks", "read_cpu_s": "read_tasks_cpu",
                "embed_s": "embed_actors", "embed_cpu_s": "embed_actors_cpu",
                "actor_start_s": "actor_start"}


def run_ray_ingest(
    config: IngestConfig,
    spec: ModelSpec,
    embedder: ImageEmbedder,
    store: VectorStore,
    options: RayOptions,
    report: IngestReport | None = None,
    embed_actor: type[EmbedActor] = EmbedActor,
    on_batch: BatchHook | None = None,
) -> IngestReport:
    """Bring ``store`` up to date with ``config.root`` (a folder or a list) on Ray Data.

    ``embedder`` is the driver's copy of the model: its preprocessing is what the read
    tasks run, and it embeds the rare file the writer must decode itself. ``on_batch``
    sees every batch the driver receives (after the actors, before the writer).

    Example:
        >>> shape = (store.info.token_count, store.info.token_width)
        >>> spec = ModelSpec("twinrank-tiny", None, model.model_id, store.info.vector_size, shape)
        >>> report = run_ray_ingest(IngestConfig(Path("photos")), spec, ImageEmbedder(model),
        ...                         store, RayOptions(actors=2))  # doctest: +SKIP
    """
    started = time.perf_counter()
    report = report if report is not None else IngestReport()
    report.precision = str(embedder.dtype).removeprefix("torch.")
    root = Path(os.path.abspath(config.root.expanduser()))
    index = StoreIndex.load(store)
    if is_source_list(root, options.source_list):
        listed = read_source_list(root)
        plan = plan_list(listed, index, report)
        root = Path(os.path.commonpath([p.as_posix() for p in listed])) if listed else root
    else:
        plan = plan_run(root, config.walk_options(), index, report)
    report.add_time("walk", time.perf_counter() - started)
    token_shape = (store.info.token_count, store.info.token_width)
    writer_embedder = PrecomputedEmbedder(embedder, store.info.vector_size, token_shape)
    load = _loader(cast(Any, writer_embedder), index, config.max_pixels,
                   config.max_file_bytes)
    writer = _Writer(config, cast(Any, writer_embedder), store, index, report, load)
    try:
        if plan.candidates:  # nothing to read: no Ray, no model on the workers
            batches = _ray_batches(config, spec, embedder, index, plan, options, embed_actor,
                                   report)
            _write_all(batches, plan, writer, writer_embedder, report, config, on_batch)
        if config.prune:
            prune_gone(root, plan, index, store, report)
    finally:
        store.flush()
        report.seconds = time.perf_counter() - started
    pair_folders_and_types(store, report)
    finish_collection(embedder.text_model, store, report, config.progress)
    report.seconds = time.perf_counter() - started
    return report


def _write_all(
    batches: Iterator[dict[str, np.ndarray]],
    plan: Plan,
    writer: _Writer,
    packer: PrecomputedEmbedder,
    report: IngestReport,
    config: IngestConfig,
    on_batch: BatchHook | None,
) -> None:
    bar = tqdm(total=len(plan.candidates), unit="img", desc="ingest (ray)",
               disable=not config.progress, smoothing=0.1)
    waited = time.perf_counter()
    try:
        for batch in batches:
            report.add_time("wait", time.perf_counter() - waited)
            if on_batch is not None:
                on_batch(batch)
            for column, stage in WORKER_TIMES.items():
                report.add_time(stage, float(np.sum(batch[column])))
            if len(batch["precision"]):
                report.precision = str(batch["precision"][0])
            for i, seq in enumerate(batch["seq"]):
                candidate = plan.candidates[int(seq)]
                writer.handle(candidate, _loaded(batch, i, candidate, packer))
            bar.update(len(batch["seq"]))
            waited = time.perf_counter()
        writer.write_batch()
    finally:
        bar.close()


def _loaded(batch: dict[str, np.ndarray], i: int, candidate: Candidate,
            packer: PrecomputedEmbedder) -> Loaded | BaseException:
    error = str(batch["error"][i])
    if error:
        return DecodeError(error, error)
    facts = FileFacts(candidate.path, int(batch["size"][i]), candidate.mtime_ns,
                      str(batch["content_hash"][i]))
    if not batch["embed"][i]:
        return Loaded(facts)
    image = ImageFacts(int(batch["width"][i]), int(batch["height"][i]),
                       str(batch["format"][i]), str(batch["captured_at"][i]) or None)
    return Loaded(facts, image, packer.pack(batch["vector"][i], batch["tokens"][i]))


def _ray_batches(
    config: IngestConfig,
    spec: ModelSpec,
    embedder: ImageEmbedder,
    index: StoreIndex,
    plan: Plan,
    options: RayOptions,
    embed_actor: type[EmbedActor],
    report: IngestReport,
) -> Iterator[dict[str, np.ndarray]]:
    """The Ray Data pipeline: candidates -> read tasks -> embedding actors, in plan order."""
    import pyarrow as pa
    import ray
    import ray.data
    from PIL import Image

    began = time.perf_counter()
    start_ray(options)
    report.add_time("ray_start", time.perf_counter() - began)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # the writer decides in plan order
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    sample = embedder.prepare(Image.new("RGB", (int(embedder.model.image_size),) * 2))
    stage = ReadStage(embedder.preparer, tuple(sample.shape), str(sample.dtype),
                       config.max_pixels, config.max_file_bytes, config.decode_timeout,
                       config.decode_nice, max(1, config.workers))
    known = ray.put(known_prefixes(index.point_ids))
    per_task = max(1, options.files_per_task)
    blocks = []
    for first in range(0, len(plan.candidates), per_task):
        chunk = plan.candidates[first:first + per_task]
        blocks.append(pa.table({
            "seq": pa.array(range(first, first + len(chunk)), pa.int64()),
            "path": [c.path.as_posix() for c in chunk],
            "size": pa.array([c.size for c in chunk], pa.int64()),
            "mtime_ns": pa.array([c.mtime_ns for c in chunk], pa.int64()),
        }))
    candidates = ray.data.from_arrow(blocks)
    read = candidates.map_batches(
        read_batch,  # type: ignore[arg-type]  # ray's stubs miss fn_kwargs' extra arguments
        fn_kwargs={"stage": stage, "known": known}, batch_size=per_task,
        num_cpus=options.read_cpus, memory=READ_TASK_MEMORY)
    embedded = read.map_batches(
        embed_actor, fn_constructor_kwargs={"spec": spec, "threads": options.model_threads},
        batch_size=config.batch_size,
        compute=ray.data.ActorPoolStrategy(size=max(1, options.actors)),
        num_cpus=options.cpus_per_actor, num_gpus=options.gpus_per_actor or None)
    yield from embedded.iter_batches(batch_size=None, batch_format="numpy")


def start_ray(options: RayOptions) -> None:
    """Join the cluster at ``options.address``, or start a local Ray (once per process)."""
    import ray

    if ray.is_initialized():
        return
    if options.address:
        ray.init(address=options.address, log_to_driver=False, logging_level=logging.WARNING)
    else:
        ray.init(num_cpus=options.local_cpus, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)



@dataclass(frozen=True)
class ServerTarget:
    """A Qdrant server or cluster to ingest into, instead of an embedded folder."""

    url: str
    collection: str | None = None
    layout: ClusterLayout = ClusterLayout()


def ingest_on_ray(
    job: IngestJob, options: RayOptions, server: ServerTarget | None = None
) -> IngestReport:
    """``ingest_folder`` on Ray: the same model choice, store and report, wider workers.

    The driver loads the model once on the CPU (for the collection's identity and the
    preprocessing the read tasks run); every actor loads its own copy by name.

    Example:
        >>> job = IngestJob(IngestConfig(Path("photos.parquet")), store=Path("unused"))
        >>> ingest_on_ray(job, RayOptions(address="auto", actors=8, gpus_per_actor=1),
        ...               ServerTarget("http://qdrant:6333", "photos"))  # doctest: +SKIP
    """
    from twinrank.ingest.collection import collection_info
    from twinrank.models import create_model

    root = job.config.root
    if not root.exists():
        raise FileNotFoundError(f"No such folder or list: {root}. Pass a folder of images "
                                f"or a txt/CSV/Parquet list of their paths.")
    existing = _existing_info(job, server)
    source = job.model or (existing.model_source if existing else DEFAULT_PRESET)
    pretrained = job.pretrained if job.model else (existing.model_pretrained if existing else None)
    source, pretrained = resolve_preset(source, pretrained)  # a preset name -> its loader
    model = create_model(source, pretrained=pretrained, device="cpu")
    config, tokens_note = settle_token_cache(job.config, existing)
    info = collection_info(model, source, pretrained, config.cache_tokens)
    if server is None:
        store = open_store(job.store, info)
    else:
        store = open_store("", info, url=server.url, collection=server.collection,
                           layout=server.layout)
    spec = ModelSpec(source, pretrained, model.model_id, info.vector_size,
                     (info.token_count, info.token_width), job.device, job.config.precision)
    with recorded_run(store, job.report_path) as report:
        report.notes.extend(tokens_note)
        run_ray_ingest(config, spec, ImageEmbedder(model, job.config.precision), store,
                       options, report)
    return report


def _existing_info(job: IngestJob, server: ServerTarget | None) -> CollectionInfo | None:
    if server is None:
        return read_info(job.store)
    try:
        with open_store("", url=server.url, collection=server.collection) as store:
            return store.info
    except StoreError:  # no such collection yet (an unreachable server fails at the open)
        return None

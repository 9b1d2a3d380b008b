"""The ingest runner: walk -> plan -> decode -> embed -> write, with a report.

Work is planned before anything is decoded: a file whose path, size and mtime are already
in the store is unchanged; otherwise its content hash decides whether it is new (embed
it), a known image under a new name (add the path, no model work), or changed.
Writes go to the store in batches and are flushed as they go, so an interrupted run
loses at most the batch in flight and the next run picks up where it stopped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from ingest.decode import DecodedImage, DecodeError, content_hash, decode_image
from ingest.embed import ImageEmbedder
from ingest.walk import iter_image_files
from ingest.write import FileFacts, add_path, build_payload, make_record, remove_paths
from search.store import VectorStore, point_id_for


@dataclass(frozen=True)
class IngestConfig:
    """How to ingest one folder."""

    root: Path
    batch_size: int = 32
    workers: int = 2
    include_hidden: bool = False
    precision: str = "auto"
    progress: bool = True


@dataclass
class IngestReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    moved: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def embedded(self) -> int:
        return self.added + self.updated

    def summary(self) -> str:
        rate = self.embedded / self.seconds if self.seconds else 0.0
        return (
            f"added {self.added}, updated {self.updated}, unchanged {self.unchanged}, "
            f"moved {self.moved}, failed {len(self.failed)} in {self.seconds:.1f} s "
            f"({rate:.1f} images/s)"
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self) | {"embedded": self.embedded}, indent=2)


@dataclass
class _Plan:
    to_embed: list[FileFacts] = field(default_factory=list)  # one file per new point
    also_at: dict[str, list[FileFacts]] = field(default_factory=dict)  # more names, same bytes


def run_ingest(config: IngestConfig, embedder: ImageEmbedder, store: VectorStore) -> IngestReport:
    """Bring ``store`` up to date with the images under ``config.root``.

    Example:
        >>> report = run_ingest(IngestConfig(Path("photos")), ImageEmbedder(model), store)
        >>> print(report.summary())
    """
    started = time.perf_counter()
    report = IngestReport()
    known = _known_files(store)
    plan = _plan(config, store, known, report)
    for batch in _batches(plan.to_embed, config.batch_size, config.progress):
        _embed_and_write(batch, config, embedder, store, report, known, plan.also_at)
    store.flush()
    report.seconds = time.perf_counter() - started
    return report


def _known_files(store: VectorStore) -> dict[str, tuple[str, int, int]]:
    """path -> (point id, size, mtime_ns) for every file the store holds."""
    known: dict[str, tuple[str, int, int]] = {}
    for point_id, payload in store.iter_payloads():
        for path, facts in payload.get("files", {}).items():
            known[path] = (point_id, int(facts["size"]), int(facts["mtime_ns"]))
    return known


def _plan(
    config: IngestConfig,
    store: VectorStore,
    known: dict[str, tuple[str, int, int]],
    report: IngestReport,
) -> _Plan:
    plan = _Plan()
    queued: dict[str, FileFacts] = {}
    for path in iter_image_files(config.root, config.include_hidden):
        path = path.resolve()
        try:
            stat = path.stat()
            entry = known.get(path.as_posix())
            if entry and entry[1] == stat.st_size and entry[2] == stat.st_mtime_ns:
                report.unchanged += 1
                continue
            facts = FileFacts(path, stat.st_size, stat.st_mtime_ns, content_hash(path))
        except OSError as error:
            report.failed.append({"path": str(path), "reason": f"cannot read file: {error}"})
            continue
        point_id = point_id_for(facts.content_hash)
        if entry and entry[0] != point_id:  # the file changed: its old point loses this path
            _drop_path(store, entry[0], path.as_posix())
        existing = store.get_payloads([point_id]).get(point_id)
        if existing is not None:  # same bytes already stored: a new name, not a new image
            store.set_payload(point_id, add_path(existing, facts))
            report.moved += 1
        elif point_id in queued:  # identical file twice in this run: embedded once
            plan.also_at.setdefault(point_id, []).append(facts)
        else:
            queued[point_id] = facts
            plan.to_embed.append(facts)
    return plan


def _drop_path(store: VectorStore, point_id: str, path: str) -> None:
    payload = store.get_payloads([point_id]).get(point_id)
    if payload is None:
        return
    remaining = remove_paths(payload, {path})
    if remaining is None:
        store.delete([point_id])
    else:
        store.set_payload(point_id, remaining)


def _batches(
    items: Sequence[FileFacts], size: int, progress: bool
) -> Iterator[list[FileFacts]]:
    bar = tqdm(total=len(items), unit="img", desc="ingest", disable=not progress)
    for start in range(0, len(items), size):
        batch = list(items[start : start + size])
        yield batch
        bar.update(len(batch))
    bar.close()


def _embed_and_write(
    batch: list[FileFacts],
    config: IngestConfig,
    embedder: ImageEmbedder,
    store: VectorStore,
    report: IngestReport,
    known: dict[str, tuple[str, int, int]],
    also_at: dict[str, list[FileFacts]],
) -> None:
    target = embedder.model.config.image_size
    with ThreadPoolExecutor(max_workers=max(1, config.workers)) as pool:
        results = list(pool.map(lambda f: _decode(f, target), batch))
    decoded = [(facts, image) for facts, image in zip(batch, results, strict=True)
               if not isinstance(image, str)]
    for facts, result in zip(batch, results, strict=True):
        if isinstance(result, str):
            report.failed.append({"path": str(facts.path), "reason": result})
    if not decoded:
        return
    vectors, tokens = embedder.embed([image.image for _, image in decoded])
    records = []
    for (facts, image), vector, token in zip(decoded, vectors, tokens, strict=True):
        point_id = point_id_for(facts.content_hash)
        payload = build_payload(facts, image)
        for other in also_at.get(point_id, []):
            payload = add_path(payload, other)
        records.append(make_record(point_id, vector, token, payload))
        if facts.path.as_posix() in known:
            report.updated += 1
        else:
            report.added += 1
    store.upsert(records)
    store.flush()


def _decode(facts: FileFacts, target_size: int) -> DecodedImage | str:
    try:
        return decode_image(facts.path, target_size)
    except DecodeError as error:
        return str(error)

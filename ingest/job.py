"""One ingest as the CLI runs it: open (or create) the store, plan, load the model only if
something must be embedded, run, report.

A re-run over unchanged files touches neither torch nor the model: the plan (``plan_run``)
finds nothing to read, and the model that would embed it is never built. A store is
opened with its own recorded identity; the model, once loaded, is checked against it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twinrank.ingest.report import IngestReport
from twinrank.ingest.runner import IngestConfig, run_ingest
from twinrank.ingest.walk import FORMATS, has_images
from twinrank.models.presets import DEFAULT_PRESET, is_preset, missing_weights
from twinrank.models.presets import resolve as resolve_preset
from twinrank.store import CollectionInfo, VectorStore, check_info, open_store, read_info
from twinrank.store.schema import SCHEMA_VERSION

if TYPE_CHECKING:
    from twinrank.models.encode import ImageEmbedder

FAST_EXPORT_ENV = "TWINRANK_FAST_EXPORT"  # "0": don't write the fast query path (tests)
LIGHT_INGEST_ENV = "TWINRANK_LIGHT_INGEST"  # "0": always the full model (benches' baseline)

log = logging.getLogger(__name__)


class IngestInterrupted(KeyboardInterrupt):
    """Ctrl+C during an ingest; carries the report of what was done before it."""

    def __init__(self, report: IngestReport) -> None:
        super().__init__("ingest interrupted")
        self.report = report


@dataclass(frozen=True)
class IngestJob:
    """Which model and store an ingest uses, and how to run it."""

    config: IngestConfig
    store: Path
    model: str | None = None  # None: the store's model, else the default preset
    pretrained: str | None = None
    device: str | None = None
    report_path: Path | None = None  # where to write the run's report as JSON
    torch_threads: int | None = None  # threads for the model's forward; None: torch default


@contextlib.contextmanager
def recorded_run(store: VectorStore, report_path: Path | None) -> Iterator[IngestReport]:
    """The report of one run, whatever engine runs it: the store is closed and the report
    written however the run ends, and Ctrl+C becomes ``IngestInterrupted`` carrying it."""
    report = IngestReport()
    try:
        yield report
    except KeyboardInterrupt as interrupt:
        report.interrupted = True
        report.notes.append("Interrupted. Run the same command again to finish; "
                            "nothing done so far is lost.")
        raise IngestInterrupted(report) from interrupt
    finally:
        store.close()
        if report_path:
            report_path.write_text(report.to_json())


def ingest_folder(job: IngestJob) -> IngestReport:
    """Ingest ``job.config.root`` into ``job.store``, creating the collection if needed.

    The store is flushed and closed however the run ends (an error, Ctrl+C), and the
    report is written even when the run is interrupted, so what was done is on record.

    Example:
        >>> job = IngestJob(IngestConfig(Path("photos"), progress=False),
        ...                 store=Path("photos.twinrank"), model="twinrank-tiny")
        >>> print(ingest_folder(job).summary())
        added 6, updated 0, unchanged 0, moved 0, duplicates 0, pruned 0, failed 0 in ...
    """
    root = job.config.root
    if not root.is_dir() and not root.is_file():
        raise FileNotFoundError(f"No such folder: {root}. Pass the folder of images to ingest.")
    if read_info(job.store) is None and not has_images(root, job.config.walk_options()):
        raise ValueError(f"No image files under {root}, so no store was created. Check the "
                         f"folder (and --include/--exclude); formats: {FORMATS}.")
    existing = read_info(job.store)
    source = job.model or (existing.model_source if existing else DEFAULT_PRESET)
    pretrained = job.pretrained if job.model else (existing.model_pretrained if existing else None)
    if existing is None and is_preset(source) and pretrained is None:
        missing = missing_weights(source)  # offline: one sentence now, not after imports
        if missing:
            raise ConnectionError(missing)
    source, pretrained = resolve_preset(source, pretrained)  # a preset name -> its loader
    loaded: list[Any] = []  # the model, once something needed it

    def load_model() -> Any:
        if not loaded:
            loaded.append(_load_model(job, source, pretrained))
        return loaded[0]

    if existing is not None and _same_model(existing, source, pretrained):
        store = open_store(job.store)  # its recorded identity; the model is checked on load
    else:
        from twinrank.ingest.collection import collection_info

        store = open_store(job.store, collection_info(load_model(), source, pretrained,
                                                      job.config.cache_tokens))
    config, tokens_note = settle_token_cache(job.config, existing)
    with recorded_run(store, job.report_path) as report:
        report.notes.extend(tokens_note)
        run_ingest(config,
                   _embedder_factory(job, store, load_model, source, pretrained, loaded),
                   store, report)
    if _export_wanted(job.store, store.info.model_id):
        _export_query_side(load_model, job.store, report)
    return report


def settle_token_cache(config: IngestConfig, existing: CollectionInfo | None,
                       ) -> tuple[IngestConfig, list[str]]:
    """The run's ``config`` with the collection's own choice of caching reranker tokens,
    and the note that says so when ``--no-cache-tokens`` asked otherwise: the choice is
    made when a store is created, and a caching store's every point keeps its tokens."""
    if existing is None or existing.token_count == 0 or config.cache_tokens:
        return config, []
    return replace(config, cache_tokens=True), [
        "This collection caches reranker tokens; --no-cache-tokens applies only to a new "
        "store (use a new --store)."]


def _same_model(existing: CollectionInfo, source: str, pretrained: str | None) -> bool:
    """Whether ``source`` names the model the collection records (so it need not load)."""
    if Path(source).exists():
        source = str(Path(source).resolve())
    return source == existing.model_source and pretrained == existing.model_pretrained


def _load_model(job: IngestJob, source: str, pretrained: str | None) -> Any:
    from twinrank.models import create_model

    if job.torch_threads:
        import torch

        torch.set_num_threads(job.torch_threads)
    return create_model(source, pretrained=pretrained, device=job.device)


def _embedder_factory(
    job: IngestJob, store: VectorStore, load_model: Callable[[], Any], source: str,
    pretrained: str | None, loaded: list[Any],
) -> Callable[[], ImageEmbedder]:
    """What ``run_ingest`` calls once it knows something must be embedded.

    Adding images to an existing collection of a model folder runs its image side alone
    (``models.image_side``: no open_clip, torchvision or transformers to import, no text
    tower to read); the full model loads when it is already needed (a new collection,
    the fast search path's export) or the image side does not cover the architecture.
    """

    def make() -> ImageEmbedder:
        from twinrank.models.encode import ImageEmbedder

        side = None if loaded or pretrained else _image_side(job, source)
        if side is not None:
            wanted = replace(store.info, model_id=side.model_id, schema_version=SCHEMA_VERSION)
            check_info(store.info, wanted, str(job.store))
            return ImageEmbedder(side, job.config.precision, text_model=load_model,
                                 in_place=True)
        from twinrank.ingest.collection import collection_info

        model = load_model()
        check_info(store.info, collection_info(model, source, pretrained), str(job.store))
        return ImageEmbedder(model, job.config.precision)

    return make


def _image_side(job: IngestJob, source: str) -> Any:
    """The image side of the model folder ``source``, or None (see ``make`` above)."""
    if os.environ.get(LIGHT_INGEST_ENV, "1") == "0":
        return None
    from twinrank.models.device import pick_device
    from twinrank.models.image_side import load_image_side

    if job.torch_threads:
        import torch

        torch.set_num_threads(job.torch_threads)
    return load_image_side(source, pick_device(job.device))


def _export_wanted(store: Path, model_id: str) -> bool:
    from twinrank.models.onnx_files import FAST_DIR, is_current

    if os.environ.get(FAST_EXPORT_ENV, "1") == "0":
        return False
    return Path(store).is_dir() and not is_current(Path(store) / FAST_DIR, model_id)


def _export_query_side(load_model: Callable[[], Any], store: Path, report: IngestReport) -> None:
    """Write (or refresh) the collection's fast query path (``models.export``), so
    ``twinrank search`` runs without torch. A model without one is recorded as such, so a
    later run does not load it again to find out; a failure is a note, never fatal (the
    ingest itself is done)."""
    from twinrank.models.export import ExportError, export_query_side, record_no_export
    from twinrank.models.onnx_files import FAST_DIR

    folder = Path(store) / FAST_DIR
    try:
        model = load_model()
        export_query_side(model, folder)
    except ExportError as error:
        record_no_export(model, folder, str(error))
        report.notes.append(f"No fast search path for this model ({error}); searches load "
                            f"torch.")
    except Exception as error:  # noqa: BLE001  (reported; the ingest itself succeeded)
        log.warning("Could not write the fast search path: %s", error)
        report.notes.append(f"Could not write the fast search path ({type(error).__name__}: "
                            f"{error}); searches load torch.")

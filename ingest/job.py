"""One ingest as the CLI runs it: load the model, open (or create) the store, run, report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from twinrank.ingest.collection import collection_info
from twinrank.ingest.report import IngestReport
from twinrank.ingest.runner import IngestConfig, run_ingest
from twinrank.ingest.walk import FORMATS, has_images
from twinrank.models import create_model
from twinrank.models.encode import ImageEmbedder
from twinrank.store import open_store, read_info


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
    model: str | None = None  # None: the model the store was built with, else twinrank-tiny
    pretrained: str | None = None
    device: str | None = None
    report_path: Path | None = None  # where to write the run's report as JSON
    torch_threads: int | None = None  # threads for the model's forward; None: torch default


def ingest_folder(job: IngestJob) -> IngestReport:
    """Ingest ``job.config.root`` into ``job.store``, creating the collection if needed.

    The store is flushed and closed however the run ends (an error, Ctrl+C), and the
    report is written even when the run is interrupted, so what was done is on record.

    Example:
        >>> job = IngestJob(IngestConfig(Path("photos")), store=Path("photos.twinrank"))
        >>> print(ingest_folder(job).summary())
    """
    root = job.config.root
    if not root.is_dir() and not root.is_file():
        raise FileNotFoundError(f"No such folder: {root}. Pass the folder of images to ingest.")
    if read_info(job.store) is None and not has_images(root, job.config.walk_options()):
        raise ValueError(f"No image files under {root}, so no store was created. Check the "
                         f"folder (and --include/--exclude); formats: {FORMATS}.")
    if job.torch_threads:
        torch.set_num_threads(job.torch_threads)
    existing = read_info(job.store)
    source = job.model or (existing.model_source if existing else "twinrank-tiny")
    pretrained = job.pretrained if job.model else (existing.model_pretrained if existing else None)
    model = create_model(source, pretrained=pretrained, device=job.device)
    store = open_store(job.store, collection_info(model, source, pretrained))
    report = IngestReport()
    try:
        run_ingest(job.config, ImageEmbedder(model, job.config.precision), store, report)
    except KeyboardInterrupt as interrupt:
        report.interrupted = True
        report.notes.append("Interrupted. Run the same command again to finish; "
                            "nothing done so far is lost.")
        raise IngestInterrupted(report) from interrupt
    finally:
        store.close()
        if job.report_path:
            job.report_path.write_text(report.to_json())
    return report

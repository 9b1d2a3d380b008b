"""One ingest as the CLI runs it: load the model, open (or create) the store, run, report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ingest.embed import ImageEmbedder
from ingest.runner import IngestConfig, IngestReport, run_ingest
from models import create_model
from search.client import collection_info
from search.store import open_store, read_info


@dataclass(frozen=True)
class IngestJob:
    """Which model and store an ingest uses, and how to run it."""

    config: IngestConfig
    store: Path
    model: str | None = None  # None: the model the store was built with, else twinrank-tiny
    pretrained: str | None = None
    device: str | None = None


def ingest_folder(job: IngestJob) -> IngestReport:
    """Ingest ``job.config.root`` into ``job.store``, creating the collection if needed.

    Example:
        >>> job = IngestJob(IngestConfig(Path("photos")), store=Path("photos.twinrank"))
        >>> print(ingest_folder(job).summary())
    """
    root = job.config.root
    if not root.exists():
        raise FileNotFoundError(f"No such folder: {root}. Pass the folder of images to ingest.")
    existing = read_info(job.store)
    source = job.model or (existing.model_source if existing else "twinrank-tiny")
    pretrained = job.pretrained if job.model else (existing.model_pretrained if existing else None)
    model = create_model(source, pretrained=pretrained, device=job.device)
    store = open_store(job.store, collection_info(model, source, pretrained))
    try:
        return run_ingest(job.config, ImageEmbedder(model, job.config.precision), store)
    finally:
        store.close()

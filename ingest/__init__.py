"""Ingest: walk a folder, decode images, embed them in batches, write them to the store."""

from twinrank.ingest.report import IngestReport
from twinrank.ingest.runner import IngestConfig, run_ingest

__all__ = ["IngestConfig", "IngestReport", "run_ingest"]

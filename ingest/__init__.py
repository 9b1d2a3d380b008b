"""Ingest: walk a folder, decode images, embed them in batches, write them to the store."""

from ingest.runner import IngestConfig, IngestReport, run_ingest

__all__ = ["IngestConfig", "IngestReport", "run_ingest"]

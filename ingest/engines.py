"""Which engine runs an ingest: this process (the default) or Ray Data.

The in-process engine never imports Ray; ``--engine ray`` loads it only when asked, and
says how to install it when it is missing.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

from twinrank.ingest.job import IngestJob, ingest_folder
from twinrank.ingest.report import IngestReport
from twinrank.ingest.sources import is_source_list

if TYPE_CHECKING:
    from twinrank.ingest.ray_engine import RayOptions, ServerTarget

ENGINES = ("local", "ray")


def ingest_with_engine(
    job: IngestJob,
    engine: str = "local",
    options: RayOptions | None = None,
    server: ServerTarget | None = None,
) -> IngestReport:
    """Run ``job`` on ``engine``; options only Ray honours are refused for the local one.

    Example:
        >>> ingest_with_engine(job, "ray", RayOptions(actors=2))  # doctest: +SKIP
    """
    if engine not in ENGINES:
        raise ValueError(f"Unknown engine {engine!r}. Use --engine local or --engine ray.")
    listed = is_source_list(job.config.root, bool(options and options.source_list))
    if engine == "local":
        if server is not None or listed:
            what = "a Qdrant server (--url)" if server is not None else "a list of paths"
            raise ValueError(f"Ingesting {what} needs --engine ray (pip install "
                             f"'twinrank[ray]'); the local engine reads a folder into --store.")
        return ingest_folder(job)
    if importlib.util.find_spec("ray") is None:
        raise ValueError("--engine ray needs Ray: pip install 'twinrank[ray]'.")
    from twinrank.ingest.ray_engine import RayOptions, ingest_on_ray

    return ingest_on_ray(job, options or RayOptions(), server)

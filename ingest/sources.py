"""Sources other than a folder: a list of image paths in a txt, CSV or Parquet file.

A list is how a large corpus is usually handed over (an export from a catalogue, one file
per batch of work). It is planned like a folder (``plan.plan_run``): a listed file whose
path, size and mtime are stored is not opened; the rest become candidates.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

from twinrank.ingest.plan import Candidate, Plan, StoreIndex, plan_run
from twinrank.ingest.report import IngestReport
from twinrank.ingest.walk import WalkOptions

LIST_SUFFIXES = (".txt", ".csv", ".parquet", ".pq")
PATH_COLUMNS = ("path", "paths", "file", "filename", "uri")


def is_source_list(path: Path, forced: bool = False) -> bool:
    """A txt/CSV/Parquet file names the images to ingest, one path per line or row."""
    return forced or (path.is_file() and path.suffix.lower() in LIST_SUFFIXES)


def read_source_list(path: Path) -> list[Path]:
    """The image paths a list file names; relative ones are taken from the list's folder.

    ``.txt``: one path per line (blank lines and ``#`` comments skipped). ``.csv`` and
    Parquet: the column ``path`` (or ``file``, ``filename``, ``uri``), else the only column.

    Example:
        >>> read_source_list(Path("batch-001.csv"))  # doctest: +SKIP
        [PosixPath('/data/photos/a.jpg'), ...]
    """
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        names = [str(v) for v in table.column(_path_column(table.column_names, path))]
    elif suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
        header = [cell.strip().lower() for cell in rows[0]] if rows else []
        if any(name in PATH_COLUMNS for name in header):
            column = header.index(_path_column(header, path))
            names = [row[column] for row in rows[1:] if len(row) > column]
        else:
            names = [row[0] for row in rows if row and len(header) == 1]
            if len(header) > 1:
                _path_column(header, path)  # raises: which column is it?
    else:
        lines = path.read_text(encoding="utf-8").splitlines()
        names = [line.strip() for line in lines]
        names = [name for name in names if name and not name.startswith("#")]
    base = path.parent
    return [Path(os.path.abspath(base / name.strip())) for name in names if name.strip()]


def _path_column(columns: Sequence[str], path: Path) -> str:
    lowered = {name.lower(): name for name in columns}
    for wanted in PATH_COLUMNS:
        if wanted in lowered:
            return lowered[wanted]
    if len(columns) == 1:
        return columns[0]
    raise ValueError(f"The list {path} has columns {', '.join(columns)}; name the column of "
                     f"image paths 'path'.")


def plan_list(paths: Sequence[Path], index: StoreIndex, report: IngestReport) -> Plan:
    """``plan_run`` for the files of a list: stat each, count the unchanged, list the rest.

    A listed file that is missing stays a candidate, so the read stage reports why.
    """
    plan = Plan()
    for path in paths:
        key = path.as_posix()
        if key in plan.seen:
            continue
        if not path.exists():
            plan.seen.add(key)
            plan.candidates.append(Candidate(path, -1, -1, index.files.get(key)))
            continue
        found = plan_run(path, WalkOptions(), index, report)
        plan.seen |= found.seen
        plan.candidates.extend(found.candidates)
    return plan

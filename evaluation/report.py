"""Evaluation results as a text table, a JSON file and COOP sweep plots.

Results are plain dicts, ``{mode: {metric: value}}``, where a mode is a way of ranking
("bi", "coop@10", "cross-all") and metrics are keys such as ``t2i_recall@1`` or
``rerank_ms_p50``. A sweep is ``{k: {metric: value}}`` for COOP at several k.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

ModeKey = TypeVar("ModeKey", str, int)

_REFERENCE_STYLES: dict[str, str] = {"bi": "tab:blue", "cross-all": "tab:red"}
_MISSING = "-"


def _metric_columns(results: Mapping[str, Mapping[str, float]]) -> list[str]:
    columns: list[str] = []
    for metrics in results.values():
        columns.extend(name for name in metrics if name not in columns)
    return columns


def _format_value(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return _MISSING
    return f"{value:.2f}"


def format_table(results: Mapping[str, Mapping[str, float]]) -> str:
    """Render results as a fixed-width table: one row per mode, one column per metric.

    Why: the CLI prints this after ``twinrank evaluate`` so the modes can be compared by
    eye; columns appear in first-seen order and a metric a mode lacks shows as ``-``.

    >>> print(format_table({"bi": {"t2i_recall@1": 41.5}, "coop@10": {"t2i_recall@1": 50.0}}))
    mode     t2i_recall@1
    -------  ------------
    bi              41.50
    coop@10         50.00
    """
    if not results:
        raise ValueError("format_table needs at least one mode's results")
    columns = _metric_columns(results)
    header = ["mode", *columns]
    rows = [
        [mode, *(_format_value(metrics.get(name)) for name in columns)]
        for mode, metrics in results.items()
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    rule = ["-" * width for width in widths]
    return "\n".join([line(header), line(rule), *(line(row) for row in rows)])


def write_json(results: Mapping[ModeKey, Mapping[str, float]], path: Path) -> Path:
    """Write results (or a sweep keyed by k) as indented JSON; return the path.

    Why: recorded results live next to the benchmark scripts and are diffed between runs.
    Keys become strings and non-finite values become ``null``, so the file is strict JSON.

    >>> write_json({"bi": {"t2i_recall@1": 41.5}}, Path(tmp) / "r.json")  # doctest: +SKIP
    """
    payload = {
        str(mode): {
            name: (float(value) if math.isfinite(value) else None)
            for name, value in metrics.items()
        }
        for mode, metrics in results.items()
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


def _sweep_series(
    sweep: Mapping[int, Mapping[str, float]], key: str
) -> tuple[list[int], list[float]]:
    ks = sorted(sweep)
    missing = [k for k in ks if key not in sweep[k]]
    if missing:
        present = sorted(sweep[missing[0]])
        raise ValueError(f"sweep entries for k={missing} have no {key!r}; they have {present}")
    return ks, [float(sweep[k][key]) for k in ks]


def _draw_references(
    axes: Axes, references: Mapping[str, Mapping[str, float]] | None, key: str
) -> None:
    for mode, metrics in (references or {}).items():
        value = metrics.get(key)
        if value is None or not math.isfinite(value):
            continue
        color = _REFERENCE_STYLES.get(mode, "tab:gray")
        axes.axhline(value, linestyle="--", color=color, label=f"{mode} ({value:.2f})")


def _save_line_plot(
    sweep: Mapping[int, Mapping[str, float]],
    key: str,
    references: Mapping[str, Mapping[str, float]] | None,
    path: Path,
) -> Path:
    ks, values = _sweep_series(sweep, key)
    figure = Figure(figsize=(6.0, 4.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot(ks, values, marker="o", color="tab:green", label=f"coop@k {key}")
    _draw_references(axes, references, key)
    axes.set_xlabel("k (candidates reranked)")
    axes.set_ylabel(key)
    axes.set_title(f"{key} vs k")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="best")
    figure.tight_layout()
    figure.savefig(path, format="png")
    return path


def _file_stem(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key.replace("@", "_at_"))


def plot_sweep(
    sweep: Mapping[int, Mapping[str, float]],
    out_dir: Path,
    metric: str = "t2i_recall@1",
    cost_key: str = "rerank_ms_p50",
    references: Mapping[str, Mapping[str, float]] | None = None,
) -> list[Path]:
    """Plot a COOP sweep: ``metric`` vs k and ``cost_key`` vs k, one PNG each.

    Why: choosing k is a trade-off between accuracy and reranking cost; the two curves
    show where recall stops improving. ``references`` (e.g. the results of modes "bi" and
    "cross-all") draws each mode's value of the plotted key as a dashed horizontal line.
    Uses matplotlib's Agg canvas directly, so no display or pyplot state is involved.

    >>> plot_sweep({10: {"t2i_recall@1": 50.0, "rerank_ms_p50": 3.0}}, out)  # doctest: +SKIP
    [PosixPath('out/sweep_t2i_recall_at_1.png'), PosixPath('out/sweep_rerank_ms_p50.png')]
    """
    if not sweep:
        raise ValueError("plot_sweep needs at least one k in the sweep")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        _save_line_plot(sweep, key, references, out_dir / f"sweep_{_file_stem(key)}.png")
        for key in (metric, cost_key)
    ]


__all__ = ["format_table", "plot_sweep", "write_json"]

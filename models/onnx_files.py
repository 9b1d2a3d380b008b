"""The layout of a query-side ONNX export, shared by the writer and the reader.

``models.export`` writes it (with torch); ``search.fast`` reads it (without). This module
imports neither, so the fast search path can check an export without loading torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FAST_DIR = "fast"  # inside the collection folder
MANIFEST = "fast.json"  # written last: its presence means the export is complete
TEXT_GRAPH = "text.onnx"
HEAD_GRAPH = "head.onnx"
BPE_VOCAB = "bpe_simple_vocab_16e6.txt.gz"
FORMAT_VERSION = 1


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """An export folder's manifest, or None when the export is missing or incomplete.

    Example:
        >>> read_manifest(Path("store") / FAST_DIR)["model_id"]
        'twinrank-tiny:random:0'
    """
    try:
        data: dict[str, Any] = json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_current(folder: Path, model_id: str) -> bool:
    """Whether ``folder`` holds this twinrank's export of ``model_id`` (or the record that
    the model has none), so nothing needs exporting.

    Example:
        >>> is_current(Path("store") / FAST_DIR, store.info.model_id)
        True
    """
    manifest = read_manifest(folder)
    return (manifest is not None and manifest.get("format_version") == FORMAT_VERSION
            and manifest.get("model_id") == model_id)

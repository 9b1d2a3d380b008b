"""BLIP's query side as files ``models.blip_query`` runs without torch.

A search on a BLIP collection encodes one text and, to rerank, runs the image-grounded
text encoder over k cached token sets: the text encoder (with its cross-attention),
``text_proj`` and ``itm_head``, about a third of ``BlipForImageTextRetrieval`` and none
of its vision tower. ``export_blip_query`` writes those weights as one float32
safetensors file (their own names), the tokenizer as a ``tokenizer.json`` the Rust
``tokenizers`` library loads, and a manifest (``blip_query.json``) naming the model.

Example:
    >>> from twinrank.models import create_model
    >>> export_blip_query(create_model("blip:Salesforce/blip-itm-base-coco"),
    ...                   Path("store/blip_query"))  # doctest: +SKIP
    PosixPath('store/blip_query')
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from twinrank.models.blip import BlipTwinModel
from twinrank.models.blip_query import FORMAT_VERSION, MANIFEST, TOKENIZER, WEIGHTS
from twinrank.models.export import ExportError

QUERY_PARTS = ("text_encoder.", "text_proj.", "itm_head.")


def export_blip_query(model: BlipTwinModel, folder: Path) -> Path:
    """Write ``model``'s query side into ``folder`` for ``BlipQuery.load``.

    The files go to a temporary folder beside it, which is moved into place, and the
    manifest is written last (atomically), so a crash never leaves a half export that
    looks complete. Raises ``ExportError`` when the model's text encoder is not the one
    ``BlipQuery`` implements.
    """
    text = model.retrieval.config.text_config
    if text.hidden_act != "gelu":
        raise ExportError(f"BLIP text activation {text.hidden_act!r} is not supported")
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".blip-query-", dir=folder.parent))
    try:
        save_file(query_weights(model), str(staging / WEIGHTS))
        export_tokenizer(model, staging / TOKENIZER)
        manifest = blip_manifest(model)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
        partial = folder / (MANIFEST + ".tmp")
        partial.write_text(json.dumps(manifest, indent=2) + "\n")
        os.replace(partial, folder / MANIFEST)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def query_weights(model: BlipTwinModel) -> dict[str, np.ndarray]:
    """The text encoder, ``text_proj`` and ``itm_head`` as float32 arrays, by their
    names in ``BlipForImageTextRetrieval``'s state dict."""
    state = model.retrieval.state_dict()
    return {name: np.ascontiguousarray(tensor.detach().float().cpu().numpy())
            for name, tensor in state.items()
            if name.startswith(QUERY_PARTS) and not name.endswith("position_ids")}


def export_tokenizer(model: BlipTwinModel, path: Path) -> None:
    """The processor's own Rust tokenizer with ``tokenize``'s truncation and no padding."""
    from tokenizers import Tokenizer

    hf_tokenizer: Any = model.processor.tokenizer
    tokenizer = Tokenizer.from_str(hf_tokenizer.backend_tokenizer.to_str())
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=model.max_text_length,
                                direction=str(hf_tokenizer.truncation_side))
    tokenizer.save(str(path))


def blip_manifest(model: BlipTwinModel) -> dict[str, Any]:
    config = model.retrieval.config
    text = config.text_config
    return {
        "format_version": FORMAT_VERSION,
        "family": model.family,
        "model_id": model.model_id,
        "reranker_trained": bool(model.reranker_trained),
        "bi_weight": float(model.bi_weight),
        "enc_token_id": int(model.enc_token_id),
        "pad_id": int(model.pad_id),
        "layer_norm_eps": float(text.layer_norm_eps),
        "heads": int(text.num_attention_heads),
        "hidden_size": int(text.hidden_size),
        "layers": int(text.num_hidden_layers),
        "vector_size": int(model.vector_size),
        "max_text_length": int(model.max_text_length),
        "token_shape": list(model.token_shape),
        "weights": WEIGHTS,
        "tokenizer": TOKENIZER,
    }

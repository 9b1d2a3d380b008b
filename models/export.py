"""The query side of a TwinModel as ONNX files, so a search needs no torch.

A text query needs two things from the model: the text tower (query vector for the kNN,
token states for the reranker) and the fusion head over the k candidates' cached image
tokens. ``export_query_side`` writes both as ONNX graphs into a folder (a collection's
``fast/``), with the tokenizer's data and a manifest naming the model they came from;
``twinrank.search.fast`` runs them with ONNX Runtime and a tokenizer that needs no torch.
A CLI search then costs about a second instead of torch's import and model load.

Example:
    >>> from twinrank.models import create_model
    >>> export_query_side(create_model("twinrank-tiny"), Path("store/fast"))
    PosixPath('store/fast')
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from twinrank.models.evidence import Evidence, evidence_payload
from twinrank.models.onnx_files import (
    BPE_VOCAB,
    FORMAT_VERSION,
    HEAD_GRAPH,
    MANIFEST,
    TEXT_GRAPH,
)
from twinrank.models.twin import TwinModel, text_forward

OPSET = 17  # ONNX Runtime 1.16 and later run it


class ExportError(RuntimeError):
    """This model's query side cannot be exported; searches use torch instead."""


class _TextQuery(nn.Module):
    """ids (B, L) -> L2-normalised text vectors (B, D) and token states (B, L, width)."""

    def __init__(self, model: TwinModel) -> None:
        super().__init__()
        self.text = model.clip.text

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled, tokens = text_forward(self.text, ids)
        return F.normalize(pooled, dim=-1), tokens


class _HeadQuery(nn.Module):
    """One query's text tokens (1, L, width) and mask (1, L) against k cached image token
    sets (k, T, W) -> match logits (k,): the head's own forward, the text repeated k times."""

    def __init__(self, model: TwinModel) -> None:
        super().__init__()
        self.head = model.head

    def forward(self, text_tokens: torch.Tensor, text_mask: torch.Tensor,
                image_tokens: torch.Tensor) -> torch.Tensor:
        k = image_tokens.shape[0]
        logits: torch.Tensor = self.head(text_tokens.expand(k, -1, -1),
                                         text_mask.expand(k, -1), image_tokens)
        return logits


class _PlainAttention(nn.Module):
    """``nn.MultiheadAttention``'s eval forward in shape-agnostic ops, same weights.

    The TorchScript exporter records the reshapes inside ``F.multi_head_attention_forward``
    with the traced batch size and length baked in, so the graph fails on any other query;
    ``unflatten``/``flatten`` over the head dimension carry no such sizes. (The dynamo
    exporter gets it right too, but costs ~30 CPU-seconds per export against ~2.)
    """

    def __init__(self, attention: nn.MultiheadAttention) -> None:
        super().__init__()
        self.attention = attention

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = False,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, None]:
        mha = self.attention
        if not mha.batch_first:  # (L, B, E) -> (B, L, E)
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        heads, width = mha.num_heads, mha.embed_dim
        weight, bias = mha.in_proj_weight, mha.in_proj_bias
        q = F.linear(query, weight[:width], None if bias is None else bias[:width])
        k = F.linear(key, weight[width:2 * width], None if bias is None else bias[width:2 * width])
        v = F.linear(value, weight[2 * width:], None if bias is None else bias[2 * width:])
        q, k, v = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, v))  # (B,H,L,d)
        mask = None
        if attn_mask is not None:
            mask = attn_mask if attn_mask.dtype != torch.bool else torch.zeros_like(
                attn_mask, dtype=q.dtype).masked_fill(attn_mask, float("-inf"))
        if key_padding_mask is not None:
            padding = torch.zeros_like(key_padding_mask, dtype=q.dtype).masked_fill(
                key_padding_mask.bool(), float("-inf"))[:, None, None, :]  # (B, 1, 1, S)
            mask = padding if mask is None else mask + padding
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, L, d)
        out = mha.out_proj(out.transpose(1, 2).flatten(2))
        return (out if mha.batch_first else out.transpose(0, 1)), None


@contextlib.contextmanager
def _plain_attention(module: nn.Module) -> Iterator[None]:
    """Every ``nn.MultiheadAttention`` in ``module`` runs as ``_PlainAttention`` inside."""
    swapped = []
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.MultiheadAttention):
                setattr(parent, name, _PlainAttention(child))
                swapped.append((parent, name, child))
    try:
        yield
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


def exportable(model: Any) -> str | None:
    """None when ``model``'s query side can be exported, else why not (one phrase)."""
    if model.family == "blip":
        return None
    if type(model) is not TwinModel:
        return f"{type(model).__name__} models have no fast path yet"
    text = model.clip.text
    if not hasattr(text, "token_embedding") or getattr(text, "cls_emb", None) is not None:
        return "only open_clip's own text tower is exported (not HF or CoCa towers)"
    if tokenizer_kind(model) is None:
        return f"its tokenizer ({type(model.tokenizer).__name__}) is not supported"
    return None


def tokenizer_kind(model: TwinModel) -> str | None:
    """"clip-bpe" for open_clip's SimpleTokenizer (lower-case cleaning, no reduction)."""
    tokenizer = model.tokenizer
    if type(tokenizer).__name__ != "SimpleTokenizer":
        return None
    if getattr(tokenizer, "reduction_fn", None) is not None:
        return None
    clean = getattr(getattr(tokenizer, "clean_fn", None), "__name__", "")
    return "clip-bpe" if clean == "_clean_lower" else None


def export_query_side(model: TwinModel, folder: Path) -> Path:
    """Write the text tower and the fusion head of ``model`` as ONNX into ``folder``.

    The files are written to a temporary folder next to it and moved into place, and the
    manifest goes last, so a crash never leaves a half export that looks complete.
    Raises ``ExportError`` when the model cannot be exported (see ``exportable``).
    """
    if model.family == "blip":
        return _export_blip(model, Path(folder))
    reason = exportable(model)
    if reason:
        raise ExportError(reason)
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    if next(model.parameters()).device.type != "cpu":  # export a CPU copy, leave it be
        model = copy.deepcopy(model).cpu()
    staging = Path(tempfile.mkdtemp(prefix=".fast-", dir=folder.parent))
    try:
        model = model.eval()
        with torch.inference_mode(False), torch.no_grad(), _plain_attention(model):
            _export_text(model, staging / TEXT_GRAPH)
            _export_head(model, staging / HEAD_GRAPH)
        _copy_vocab(staging / BPE_VOCAB)
        manifest = {
            "format_version": FORMAT_VERSION,
            "model_id": model.model_id,
            "tokenizer": "clip-bpe",
            "context_length": model.config.context_length,
            "pad_id": model.pad_id,
            "vector_size": model.config.embed_dim,
            "token_shape": [model.config.image_token_count, model.config.fusion.width],
            "reranker_trained": bool(getattr(model, "reranker_trained", False)),
            "bi_weight": model.bi_weight,
            "reranker_evidence": evidence_json(model.reranker_evidence),
            "text_graph": TEXT_GRAPH,
            "head_graph": HEAD_GRAPH,
            "vocab": BPE_VOCAB,
        }
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _export_blip(model: Any, folder: Path) -> Path:
    """BLIP's query side for numpy (``models.blip_export``), then the fast path's manifest
    naming it, written last like every export's."""
    from twinrank.models.blip_export import export_blip_query

    export_blip_query(model, folder)
    manifest = {"format_version": FORMAT_VERSION, "model_id": model.model_id,
                "family": "blip", "tokenizer": "bert-wordpiece",
                "reranker_trained": bool(model.reranker_trained),
                "bi_weight": model.bi_weight,
                "reranker_evidence": evidence_json(model.reranker_evidence)}
    partial = folder / (MANIFEST + ".tmp")
    partial.write_text(json.dumps(manifest, indent=2))
    os.replace(partial, folder / MANIFEST)
    return folder


def evidence_json(evidence: Evidence | None) -> dict[str, Any] | None:
    """What an export records of the model's reranker evidence (None: unproven)."""
    return None if evidence is None else evidence_payload(evidence)


def record_no_export(model: Any, folder: Path, reason: str) -> None:
    """Record that ``model`` has no fast path (and why), so no one exports it again."""
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    manifest = {"format_version": FORMAT_VERSION, "model_id": model.model_id,
                "unavailable": reason}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))


def _export_text(model: TwinModel, path: Path) -> None:
    # sizes 0 and 1 would be specialised by the tracer: two texts, a length of its own
    ids = model.tokenize(["a photo of a red circle", "a blue square left of it"]).cpu()
    _onnx_export(_TextQuery(model).cpu().float(), (ids,), path, ["ids"],
                 ["text_vector", "text_tokens"],
                 {"ids": {0: "batch", 1: "length"}, "text_vector": {0: "batch"},
                  "text_tokens": {0: "batch", 1: "length"}})


def _export_head(model: TwinModel, path: Path) -> None:
    tokens, width = model.config.image_token_count, model.config.fusion.width
    text = torch.randn(1, 7, model.text_width)
    mask = torch.ones(1, 7, dtype=torch.bool)
    image = torch.randn(3, tokens, width)
    _onnx_export(_HeadQuery(model).cpu().float(), (text, mask, image), path,
                 ["text_tokens", "text_mask", "image_tokens"], ["logits"],
                 {"text_tokens": {1: "length"}, "text_mask": {1: "length"},
                  "image_tokens": {0: "k"}, "logits": {0: "k"}})


def _onnx_export(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path,
                 inputs: list[str], outputs: list[str],
                 axes: dict[str, dict[int, str]]) -> None:
    """Export ``module`` to ``path``, its weights in ``path`` + ``.data`` beside it.

    ONNX Runtime memory-maps external weights instead of parsing and copying them out of
    the graph file: for ViT-B-32's text tower that halved a cold search's memory (410 ->
    220 MB) and its session start, and the token table's rows are read only when used.
    """
    import onnx

    graph = path.with_suffix(".tmp.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, str(graph), input_names=inputs,
                          output_names=outputs, dynamic_axes=axes, opset_version=OPSET,
                          dynamo=False)
    proto = onnx.load(str(graph))
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=1024)
    graph.unlink()


def _copy_vocab(target: Path) -> None:
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        source = Path(location) / BPE_VOCAB
        if source.is_file():
            shutil.copyfile(source, target)
            return
    raise ExportError(f"open_clip's tokenizer vocabulary {BPE_VOCAB} was not found")

"""BLIP's query side in numpy: the ITC text vector and the ITM match logit, no torch.

A search on a BLIP collection needs two things from the model: the text encoder's CLS
through ``text_proj`` (the bi-encoder's query vector) and, for the top k, the same
encoder with ``[ENC]`` first cross-attending to each candidate's cached token states,
``itm_head``'s logit[1]. ``models.blip_export`` writes the weights that needs (text
encoder, ``text_proj``, ``itm_head``; no vision tower) as one float32 safetensors file,
the tokenizer as ``tokenizer.json`` and a manifest; ``BlipQuery`` memory-maps the weights
and runs both in numpy, so a search imports neither torch nor transformers.

The rerank never projects the cached tokens. In a cross-attention layer a key is
``x W_k + b_k``: ``q . (x W_k + b_k)`` is ``(q W_k^T) . x`` plus a constant per query
row, which softmax ignores, and since softmax rows sum to one ``softmax(.) (x W_v + b_v)``
is ``(softmax(.) x) W_v + b_v``. So each head moves the L query rows into token space
(L x W), scores and averages the T tokens there, and applies its slice of ``W_v`` to the
L averages: about ``2 k H L T W`` multiply-adds per layer instead of ``2 k T W H d`` for
the keys and values, cheaper while ``L`` is under about ``d`` (64 at base size); longer
texts take the usual route.

Example:
    >>> query = BlipQuery.load(Path("store/blip_query"))  # doctest: +SKIP
    >>> vectors, ids, mask = query.encode(["a dog on the beach"])  # doctest: +SKIP
    >>> query.match_logits(ids, mask, cached_tokens).shape  # doctest: +SKIP
    (20,)
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from twinrank.models.evidence import Evidence

MANIFEST = "blip_query.json"  # written last: its presence means the export is complete
WEIGHTS = "blip_query.safetensors"
TOKENIZER = "tokenizer.json"
FORMAT_VERSION = 1
PREFIX = "text_encoder."  # the weights keep BlipForImageTextRetrieval's own names

_MASKED = float(np.finfo(np.float32).min)  # what transformers adds at masked keys


class BlipQueryError(RuntimeError):
    """The folder holds no usable BLIP query-side export; the message says why."""


@dataclass(frozen=True)
class BlipQueryManifest:
    """What the export records beside the weights (``blip_query.json``)."""

    model_id: str
    reranker_trained: bool
    bi_weight: float
    enc_token_id: int
    pad_id: int
    layer_norm_eps: float
    heads: int
    hidden_size: int
    layers: int
    vector_size: int
    max_text_length: int
    token_shape: tuple[int, int]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BlipQueryManifest:
        fields = {name: data[name] for name in cls.__dataclass_fields__}
        fields["token_shape"] = tuple(fields["token_shape"])
        return cls(**fields)


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The export's manifest, or None when it is missing, incomplete or of another format.

    Example:
        >>> read_manifest(Path("store/blip_query"))["model_id"]  # doctest: +SKIP
        'blip:Salesforce/blip-itm-base-coco@4f9...'
    """
    try:
        data = json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
        return None
    return data


def load_safetensors_mmap(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as a read-only numpy view of one memory map.

    ``safetensors``' own numpy loader copies each tensor out of the file (seconds for
    BLIP's 0.5 GB text side); a view costs nothing until a page is read, and a query that
    uses a few rows of the word embeddings reads only those.
    """
    with open(path, "rb") as handle:
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    (header_size,) = struct.unpack("<Q", mapped[:8])
    header = json.loads(mapped[8:8 + header_size])
    start = 8 + header_size
    dtypes = {"F32": np.float32, "F16": np.float16, "I64": np.int64}
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        dtype = np.dtype(dtypes[entry["dtype"]])
        count = (end - begin) // dtype.itemsize
        array = np.frombuffer(mapped, dtype=dtype, count=count, offset=start + begin)
        tensors[name] = array.reshape(entry["shape"])
    return tensors


class BlipQuery:
    """BLIP's text encoder, ``text_proj`` and ``itm_head`` in numpy float32.

    ``encode`` equals ``BlipTwinModel.encode_text`` and ``match_logits`` equals
    ``BlipTwinModel.rerank_logit`` (``tests/test_blip_query.py``: within 1e-4).
    """

    def __init__(self, folder: Path, manifest: BlipQueryManifest,
                 weights: dict[str, np.ndarray], tokenizer: Any,
                 threads: int | None = None) -> None:
        self.folder = folder
        self.manifest = manifest
        self.tokenizer = tokenizer
        self._w = weights
        self._head_size = manifest.hidden_size // manifest.heads
        self.threads = threads or os.cpu_count() or 1
        # What search's rule reads (``rerank.policy``); the fast path sets the evidence
        # from the collection's export manifest.
        self.reranker_trained = manifest.reranker_trained
        self.bi_weight = manifest.bi_weight
        self.reranker_evidence: Evidence | None = None

    @classmethod
    def load(cls, folder: Path, threads: int | None = None) -> BlipQuery:
        """The export in ``folder``, or ``BlipQueryError`` when it is missing or partial."""
        from tokenizers import Tokenizer

        folder = Path(folder)
        data = read_manifest(folder)
        if data is None:
            raise BlipQueryError(f"no complete BLIP query export in {folder}")
        try:
            manifest = BlipQueryManifest.from_json(data)
            weights = load_safetensors_mmap(folder / WEIGHTS)
            tokenizer = Tokenizer.from_file(str(folder / TOKENIZER))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise BlipQueryError(f"unreadable BLIP query export in {folder}: {error}") from error
        return cls(folder, manifest, weights, tokenizer, threads)

    @property
    def model_id(self) -> str:
        return self.manifest.model_id

    def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Ids (B, L) int64 padded to the longest text, as ``BlipTwinModel.tokenize``,
        and the mask (B, L) bool of real tokens (``ids != pad_id``)."""
        if not texts:
            raise ValueError("no texts to encode")
        encodings = self.tokenizer.encode_batch(list(texts))
        length = max(len(encoding.ids) for encoding in encodings)
        ids = np.full((len(encodings), length), self.manifest.pad_id, dtype=np.int64)
        for row, encoding in enumerate(encodings):
            ids[row, :len(encoding.ids)] = encoding.ids
        return ids, ids != self.manifest.pad_id

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """ITC text vectors (B, D) float32, L2-normalised, with the ids (B, L) int64 and
        mask (B, L) bool that ``match_logits`` takes.

        Example:
            >>> vectors, ids, mask = query.encode(["a red circle"])  # doctest: +SKIP
        """
        ids, mask = self.tokenize(texts)
        states = self._encoder(ids, mask, None)  # (B, L, hidden)
        vectors = self._linear(states[:, 0, :], "text_proj")  # (B, D)
        norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
        return (vectors / np.maximum(norms, 1e-12)).astype(np.float32), ids, mask

    def match_logits(self, ids: np.ndarray, mask: np.ndarray,
                     image_tokens: np.ndarray) -> np.ndarray:
        """ITM logit[1] (k,) float32 of one query (ids and mask (1, L)) against k cached
        token sets (k, T, W), float32 or float16: the image-grounded encoder reads
        ``[ENC]`` in place of ``[CLS]``, as BLIP's authors score a pair.

        Example:
            >>> query.match_logits(ids[:1], mask[:1], tokens).shape  # doctest: +SKIP
            (20,)
        """
        ids, mask = np.asarray(ids), np.asarray(mask, dtype=bool)
        if ids.ndim != 2 or ids.shape[0] != 1 or mask.shape != ids.shape:
            raise ValueError(f"one query's ids and mask (1, L), not {ids.shape}, {mask.shape}")
        tokens = np.asarray(image_tokens)
        if tokens.ndim != 3 or tokens.shape[-1] != self.manifest.token_shape[1]:
            raise ValueError(f"image tokens (k, T, {self.manifest.token_shape[1]}), "
                             f"not {tokens.shape}")
        if tokens.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        # Masked positions are masked keys: no row reads them, so dropping them is exact.
        kept = ids[:, mask[0]].copy()  # (1, L')
        kept[:, 0] = self.manifest.enc_token_id
        parts = np.array_split(np.arange(tokens.shape[0]), min(self.threads, len(tokens)))
        if len(parts) == 1:
            return self._match(kept, tokens)
        # One BLAS thread per worker, the candidates split between the workers (numpy
        # releases the GIL in its products): steadier than OpenBLAS's own threads on a
        # busy machine (bench/results/blip_rerank_bench.json).
        from concurrent.futures import ThreadPoolExecutor

        from threadpoolctl import threadpool_limits

        with threadpool_limits(1), ThreadPoolExecutor(len(parts)) as pool:
            found = list(pool.map(lambda rows: self._match(kept, tokens[rows]), parts))
        return np.concatenate(found)

    def _match(self, ids: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """ITM logit[1] (k,) of ids (1, L') already ``[ENC]``-first against (k, T, W)."""
        tokens = np.ascontiguousarray(tokens, dtype=np.float32)
        states = self._encoder(ids, np.ones_like(ids, dtype=bool), tokens)  # (k, L', hidden)
        logits = self._linear(states[:, 0, :], "itm_head")  # (k, 2)
        return np.ascontiguousarray(logits[:, 1], dtype=np.float32)

    # --- the text encoder (transformers' BlipTextModel, eval mode) --------------------

    def _encoder(self, ids: np.ndarray, mask: np.ndarray,
                 image: np.ndarray | None) -> np.ndarray:
        """Hidden states (B, L, hidden); with ``image`` (k, T, W) every layer
        cross-attends to it and B becomes k (a single query is shared until then)."""
        w = self._w
        length = ids.shape[1]
        states = (w[PREFIX + "embeddings.word_embeddings.weight"][ids]
                  + w[PREFIX + "embeddings.position_embeddings.weight"][:length])
        states = self._layer_norm(states, PREFIX + "embeddings.LayerNorm")
        additive = (None if bool(mask.all()) else  # (B, 1, 1, L): masked keys
                    np.where(mask, 0.0, _MASKED).astype(np.float32)[:, None, None, :])
        for index in range(self.manifest.layers):
            prefix = f"{PREFIX}encoder.layer.{index}."
            context = self._self_attention(states, additive, prefix + "attention.self.")
            states = self._residual(context, states, prefix + "attention.output.")
            if image is not None:
                context = self._cross_attention(states, image, prefix + "crossattention.self.")
                states = self._residual(context, np.broadcast_to(states, context.shape),
                                        prefix + "crossattention.output.")
            inner = _gelu(self._linear(states, prefix + "intermediate.dense"))
            states = self._residual(inner, states, prefix + "output.")
        return states

    def _self_attention(self, states: np.ndarray, additive: np.ndarray | None,
                        prefix: str) -> np.ndarray:
        batch, length, _ = states.shape
        heads, size = self.manifest.heads, self._head_size
        q, k, v = (self._linear(states, prefix + name).reshape(batch, length, heads, size)
                   .transpose(0, 2, 1, 3) for name in ("query", "key", "value"))  # (B,H,L,d)
        scores = (q @ k.transpose(0, 1, 3, 2)) / np.float32(np.sqrt(size))  # (B, H, L, L)
        if additive is not None:
            scores = scores + additive
        context = _softmax(scores) @ v  # (B, H, L, d)
        return context.transpose(0, 2, 1, 3).reshape(batch, length, heads * size)

    def _cross_attention(self, states: np.ndarray, image: np.ndarray,
                         prefix: str) -> np.ndarray:
        """Context (k, L, hidden) of ``states`` (1 or k, L, hidden) over ``image``
        (k, T, W), the tokens unprojected while that is cheaper (see the module's doc)."""
        length, width = states.shape[1], image.shape[-1]
        size = self._head_size
        if length * (width - size) >= size * width:  # long text: projecting costs less
            return self._cross_attention_projected(states, image, prefix)
        batch, heads, count = states.shape[0], self.manifest.heads, image.shape[0]
        w = self._w
        q = self._linear(states, prefix + "query") / np.float32(np.sqrt(size))
        q = q.reshape(batch * length, heads, size).transpose(1, 0, 2)  # (H, B*L, d)
        w_key = w[prefix + "key.weight"].reshape(heads, size, width)
        q_tokens = (q @ w_key).reshape(heads, batch, length, width)  # (H, B, L, W)
        q_tokens = q_tokens.transpose(1, 0, 2, 3).reshape(batch, heads * length, width)
        probs = _softmax(q_tokens @ image.transpose(0, 2, 1))  # (k, H*L, T)
        mixed = (probs @ image).reshape(count, heads, length, width)  # (k, H, L, W)
        mixed = mixed.transpose(1, 0, 2, 3).reshape(heads, count * length, width)
        w_value = w[prefix + "value.weight"].reshape(heads, size, width)
        context = mixed @ w_value.transpose(0, 2, 1)  # (H, k*L, d)
        context = context + w[prefix + "value.bias"].reshape(heads, 1, size)
        return context.transpose(1, 0, 2).reshape(count, length, heads * size)

    def _cross_attention_projected(self, states: np.ndarray, image: np.ndarray,
                                   prefix: str) -> np.ndarray:
        """The usual cross-attention: the T tokens projected to keys and values."""
        batch, length, _ = states.shape
        count, tokens, _ = image.shape
        heads, size = self.manifest.heads, self._head_size
        q = self._linear(states, prefix + "query").reshape(batch, length, heads, size)
        k, v = (self._linear(image, prefix + name).reshape(count, tokens, heads, size)
                .transpose(0, 2, 3, 1) for name in ("key", "value"))  # (k, H, d, T)
        scores = (q.transpose(0, 2, 1, 3) @ k) / np.float32(np.sqrt(size))  # (k, H, L, T)
        context = _softmax(scores) @ v.transpose(0, 1, 3, 2)  # (k, H, L, d)
        return context.transpose(0, 2, 1, 3).reshape(count, length, heads * size)

    def _residual(self, update: np.ndarray, states: np.ndarray, prefix: str) -> np.ndarray:
        """``LayerNorm(dense(update) + states)``: BERT's output block."""
        return self._layer_norm(self._linear(update, prefix + "dense") + states,
                                prefix + "LayerNorm")

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        weight, bias = self._w[name + ".weight"], self._w[name + ".bias"]
        flat = x.reshape(-1, x.shape[-1]) @ weight.T + bias  # one GEMM over all rows
        return flat.reshape(*x.shape[:-1], weight.shape[0])

    def _layer_norm(self, x: np.ndarray, name: str) -> np.ndarray:
        centred = x - x.mean(axis=-1, keepdims=True)
        variance = np.mean(centred * centred, axis=-1, keepdims=True)
        scale = self._w[name + ".weight"] / np.sqrt(variance + np.float32(
            self.manifest.layer_norm_eps))
        return centred * scale + self._w[name + ".bias"]


def _softmax(scores: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in place on ``scores``."""
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    return scores


# erfc(z) = t exp(-z^2 + P(t)), t = 1 / (1 + z / 2), z >= 0: relative error < 1.2e-7
# everywhere (Numerical Recipes' Chebyshev fit), so GELU is exact to float32 rounding.
_ERFC = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807,
         -1.13520398, 1.48851587, -0.82215223, 0.17087277)


def _gelu(x: np.ndarray) -> np.ndarray:
    """transformers' "gelu": ``x * Phi(x)`` with the exact erf, not the tanh form."""
    z = np.abs(x) * np.float32(1 / np.sqrt(2))
    t = 1 / (1 + np.float32(0.5) * z)
    poly = np.full_like(t, _ERFC[-1])
    for coefficient in reversed(_ERFC[:-1]):
        poly *= t
        poly += np.float32(coefficient)
    poly -= z * z
    tail = np.float32(0.5) * t * np.exp(poly)  # Phi(-|x|) = erfc(|x| / sqrt 2) / 2
    phi = np.where(x >= 0, 1 - tail, tail)
    return (x * phi).astype(np.float32, copy=False)

"""A text search without torch: the query side in ONNX Runtime, the store as usual.

``twinrank search`` pays for what it runs. The torch path imports torch and open_clip and
loads both towers (seconds, gigabytes) to encode one query; this path reads the
collection's ``fast/`` export (``twinrank.models.export``: the text tower and the fusion
head as ONNX graphs, the tokenizer's vocabulary, a manifest naming the model) and runs
only those, with numpy and a tokenizer that needs no torch. Same top-k and the same
scores to float rounding as the torch path (``tests/test_fast_path.py``).

``FastQueryModel.open`` refuses an export that is missing, incomplete or made from
another model than the collection's (``FastPathUnavailable``, one sentence); the CLI
then says so in one line and searches with torch.

Example:
    >>> from twinrank.store import open_store
    >>> with open_store("~/.twinrank/store") as store:
    ...     fast = FastQueryModel.open(Path("~/.twinrank/store").expanduser(), store.info)
    ...     hits = fast_search(store, fast, FastSearch("a red circle", k=5))
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from twinrank.models.onnx_files import FAST_DIR, FORMAT_VERSION, read_manifest
from twinrank.rerank.base import untrained_allowed
from twinrank.search.hits import Hit, SearchResults
from twinrank.store import CollectionInfo, VectorStore
from twinrank.store.filters import SearchFilter

UNTRAINED_NOTE = ("No reranking: this collection's model has no trained reranker. Use "
                  "--reranker blip-itm, a preset with a reranker (twinrank models), or "
                  "twinrank train.")


class FastPathUnavailable(RuntimeError):
    """The fast path cannot serve this collection; the message says why in one phrase."""


class NeedsTorch(FastPathUnavailable):
    """The search asks for what only the torch path runs (another reranker, say): not a
    problem with the collection, so nothing to tell the user."""


@dataclass(frozen=True)
class FastSearch:
    """One text search as the fast path runs it (the CLI's options, nothing more)."""

    query: str
    k: int = 10
    rerank: bool = True
    rerank_top_k: int = 20
    bi_weight: float | None = None  # None: the export's recorded recipe
    filters: SearchFilter | None = None
    reranker: str | None = None  # None: the collection's trained one, else none


class FastQueryModel:
    """The exported text tower and fusion head, run by ONNX Runtime on the CPU."""

    def __init__(self, folder: Path, manifest: dict[str, Any], threads: int | None = None):
        import onnxruntime as ort

        from twinrank.search.bpe import ClipBpe

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 0  # 0: ONNX Runtime's choice (one per core)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        # The graphs run once or twice per process: optimising them cost more at session
        # start than it saved (ViT-B-32 text tower, measured in bench/cli_speed_bench.py).
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        providers = ["CPUExecutionProvider"]
        self.folder = folder
        self.manifest = manifest
        self.pad_id = int(manifest["pad_id"])
        self.reranker_trained = bool(manifest.get("reranker_trained", False))
        self.bi_weight = float(manifest.get("bi_weight", 0.0))
        self.tokenizer = ClipBpe(folder / manifest["vocab"], int(manifest["context_length"]))
        try:
            self._text = ort.InferenceSession(str(folder / manifest["text_graph"]), options,
                                              providers=providers)
        except Exception as error:  # ONNX Runtime raises its own kinds; all mean unusable
            raise FastPathUnavailable(
                f"its fast query export cannot be read ({str(error)[:200]}); delete "
                f"{folder} and run `twinrank ingest` to write it again") from None
        self._head_file = folder / manifest["head_graph"]
        self._options, self._providers = options, providers
        self._head: Any = None  # loaded on the first rerank

    @classmethod
    def open(cls, collection: Path, info: CollectionInfo,
             threads: int | None = None) -> FastQueryModel:
        """The export in ``collection``'s ``fast/`` folder, checked against ``info``."""
        folder = Path(collection) / FAST_DIR
        manifest = read_manifest(folder)
        if manifest is None:
            raise FastPathUnavailable("this collection has no fast query export yet")
        if manifest.get("unavailable"):
            raise FastPathUnavailable(f"this model has none: {manifest['unavailable']}")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise FastPathUnavailable("its fast query export is from another twinrank version")
        if manifest.get("model_id") != info.model_id:
            raise FastPathUnavailable(
                f"its fast query export is of model {manifest.get('model_id')!r}, not the "
                f"collection's {info.model_id!r}")
        if manifest.get("tokenizer") != "clip-bpe":
            raise FastPathUnavailable(f"tokenizer {manifest.get('tokenizer')!r} has no fast path")
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise FastPathUnavailable(
                "onnxruntime is not installed (pip install onnxruntime)") from None
        return cls(folder, manifest, threads)

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Text vectors (B, D), token states (B, L, width) and mask (B, L), L cut to the
        longest text (exact: the text tower is causal), as ``TwinModel.tokenize`` does."""
        ids = self.tokenizer(texts)
        mask = ids != self.pad_id
        length = max(int(mask.sum(axis=1).max()) if len(ids) else 1, 1)
        ids, mask = ids[:, :length], mask[:, :length]
        vectors, tokens = self._text.run(None, {"ids": ids})
        return vectors, tokens, mask

    def match_logits(self, text_tokens: np.ndarray, text_mask: np.ndarray,
                     image_tokens: np.ndarray) -> np.ndarray:
        """Match logits (k,) of one query (1, L, width), (1, L) against (k, T, W) tokens."""
        if self._head is None:
            import onnxruntime as ort

            self._head = ort.InferenceSession(str(self._head_file), self._options,
                                              providers=self._providers)
        logits: np.ndarray = self._head.run(None, {
            "text_tokens": np.ascontiguousarray(text_tokens, dtype=np.float32),
            "text_mask": np.ascontiguousarray(text_mask, dtype=bool),
            "image_tokens": np.ascontiguousarray(image_tokens, dtype=np.float32)})[0]
        return logits


def fast_search(store: VectorStore, fast: FastQueryModel, request: FastSearch) -> SearchResults:
    """The best ``request.k`` images for a text query, reranked by the exported head.

    The same stages, order and timings as ``SearchClient.search`` for a text query.
    """
    from twinrank.search.ranking import apply_scores

    rerank, _ = reranks(request, fast.reranker_trained)
    query = " ".join(str(request.query).split())
    if not query:
        raise ValueError("The query is empty; type what you are looking for.")
    if request.k < 1:
        raise ValueError(f"k must be at least 1, got {request.k}.")
    started = time.perf_counter()
    vectors, tokens, mask = fast.encode([query])
    timings = {"encode_ms": _ms_since(started)}
    depth = max(request.k, request.rerank_top_k) if rerank else request.k
    started = time.perf_counter()
    stored = store.search(vectors[0], depth, request.filters, modality="text")
    timings["search_ms"] = _ms_since(started)
    hits = [Hit(id=s.id, path=_first_path(s.payload), score=s.score, bi_score=s.score,
                bi_rank=rank, payload=s.payload) for rank, s in enumerate(stored, start=1)]
    if rerank and hits:
        started = time.perf_counter()
        cached = store.get_tokens([h.id for h in hits])
        if len(cached) < len(hits):
            raise FastPathUnavailable("some hits have no cached reranker tokens")
        image_tokens = np.stack([cached[h.id] for h in hits]).astype(np.float32)
        scores = fast.match_logits(tokens, mask, image_tokens)
        weight = fast.bi_weight if request.bi_weight is None else request.bi_weight
        hits = apply_scores(hits, scores, weight)
        timings["rerank_ms"] = _ms_since(started)
    return SearchResults(hits[: request.k], timings)


def reranks(request: FastSearch, trained: bool) -> tuple[bool, str | None]:
    """Whether the fast path reranks ``request`` (and a note when it does not), by the
    rule the torch path follows (``rerank.registry``); raises ``FastPathUnavailable`` for
    what only torch runs (another reranker, an untrained head asked for by name)."""
    spec = (request.reranker or "").strip().lower()
    if not request.rerank or spec == "none":
        return False, None
    if spec == "":
        if trained or untrained_allowed():
            return True, None
        return False, UNTRAINED_NOTE
    if spec != "fused":
        raise NeedsTorch(f"the {spec.partition(':')[0]} reranker runs in torch")
    if not trained and not untrained_allowed():
        raise NeedsTorch("this collection's reranker is untrained")  # torch says so
    return True, None


def run_fast_search(collection: Path, request: FastSearch,
                    threads: int | None = None) -> tuple[SearchResults, str | None]:
    """Open the collection at ``collection`` and its export, and search it: the hits, and
    a note when they were not reranked although reranking was on (an untrained head).

    Raises ``FastPathUnavailable`` before anything is searched when the export cannot
    serve it (the caller falls back to the torch path).
    """
    from twinrank.store import open_store, read_info

    info = read_info(collection)
    if info is None:
        raise FastPathUnavailable("there is no collection there")
    fast = FastQueryModel.open(collection, info, threads)
    _, note = reranks(request, fast.reranker_trained)  # refuses before the store opens
    with open_store(collection) as store:
        return fast_search(store, fast, request), note



def _first_path(payload: dict[str, Any]) -> str:
    paths = payload.get("paths") or [""]
    return str(paths[0])


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0

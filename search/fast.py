"""A text search without torch: the exported query side, the store as usual.

``twinrank search`` pays for what it runs. The torch path imports torch and loads the
whole model (seconds, gigabytes) to encode one query; this path reads the collection's
``fast/`` export, written at ingest, and runs only the query side: an open_clip
TwinModel's text tower and fusion head as ONNX graphs (``models.export``), or BLIP's
text encoder and ITM head in numpy (``models.blip_query``), with tokenizers that need no
torch. The hits come from the one route every search takes (``search.route``): same
top-k and the same scores to float rounding as the torch path (``tests/test_fast_path.py``,
``tests/test_blip_query.py``).

``open_query_side`` refuses an export that is missing, incomplete or made from another
model than the collection's (``FastPathUnavailable``, one phrase); the CLI then says so in
one line and searches with torch.

Example:
    >>> from twinrank.store import open_store
    >>> with open_store("~/.twinrank/store") as store:
    ...     side = open_query_side(Path("~/.twinrank/store").expanduser(), store.info)
    ...     hits = fast_search(store, side, FastSearch("a red circle", k=5))
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from twinrank.models.evidence import Evidence, evidence_from_dict, read_evidence
from twinrank.models.onnx_files import FAST_DIR, FORMAT_VERSION, read_manifest
from twinrank.rerank.base import Candidate, RerankQuery, TokenSource, as_query, untrained_allowed
from twinrank.rerank.policy import RerankerOwner, default_reranker, forced_note
from twinrank.search.hits import SearchResults
from twinrank.search.route import RerankStep, check_k, clean_query, ms_since, run_query
from twinrank.store import CollectionInfo, VectorStore
from twinrank.store.filters import SearchFilter


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
    reranker: str = "auto"  # the collection's trained one, else none (as SearchClient)


class QuerySide(RerankerOwner, Protocol):
    """What the fast path runs of a model: its text encoder and its cross-encoder, over
    the collection's cached tokens, and what search's rule reads of it (``RerankerOwner``).
    ``FastQueryModel`` (an open_clip TwinModel's ONNX export) and
    ``models.blip_query.BlipQuery`` (BLIP in numpy) are the two."""

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Text vectors (B, D), what the cross-encoder reads of the text, and its mask."""
        ...

    def match_logits(self, text_tokens: np.ndarray, text_mask: np.ndarray,
                     image_tokens: np.ndarray) -> np.ndarray:
        """Rerank scores (k,) of one query against k cached token sets (k, T, W)."""
        ...


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
        self.model_id = str(manifest["model_id"])
        self.reranker_trained = bool(manifest.get("reranker_trained", False))
        self.bi_weight = float(manifest.get("bi_weight", 0.0))
        self.reranker_evidence = manifest_evidence(manifest)
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


def open_query_side(collection: Path, info: CollectionInfo,
                    threads: int | None = None) -> QuerySide:
    """The query side exported into ``collection``'s ``fast/`` folder, checked against
    ``info``; ``FastPathUnavailable`` (one phrase) when there is none it can run."""
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
    manifest = with_fresh_evidence(manifest, info.model_source)
    tokenizer = manifest.get("tokenizer")
    if tokenizer == "bert-wordpiece":
        from twinrank.models.blip_query import BlipQuery, BlipQueryError

        try:
            blip = BlipQuery.load(folder, threads)
        except BlipQueryError as error:
            raise FastPathUnavailable(
                f"its fast query export cannot be read ({error}); delete {folder} and run "
                f"`twinrank ingest` to write it again") from None
        blip.bi_weight = float(manifest.get("bi_weight", blip.bi_weight))
        blip.reranker_evidence = manifest_evidence(manifest)
        return blip
    if tokenizer != "clip-bpe":
        raise FastPathUnavailable(f"tokenizer {tokenizer!r} has no fast path")
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise FastPathUnavailable(
            "onnxruntime is not installed (pip install onnxruntime)") from None
    return FastQueryModel(folder, manifest, threads)


def manifest_evidence(manifest: dict[str, Any]) -> Evidence | None:
    """The reranker evidence an export recorded (``models.evidence``), or None."""
    recorded = manifest.get("reranker_evidence")
    return evidence_from_dict(recorded) if isinstance(recorded, dict) else None


def with_fresh_evidence(manifest: dict[str, Any], model_source: str) -> dict[str, Any]:
    """``manifest`` with the evidence its model folder holds now: ``twinrank evaluate
    --record`` may have measured the model after the export was written."""
    folder = Path(model_source.removeprefix("blip:"))
    found = read_evidence(folder) if folder.is_dir() else None
    if found is None:
        return manifest
    from twinrank.models.evidence import evidence_payload

    return manifest | {"reranker_evidence": evidence_payload(found),
                       "bi_weight": found.bi_weight}


class ExportedReranker:
    """A query side's cross-encoder as a ``Reranker``: it scores the candidates' cached
    tokens, reusing the query's encoding when the search already made it."""

    name = "fused"

    def __init__(self, side: QuerySide, tokens: TokenSource) -> None:
        self.side, self.tokens = side, tokens

    def score(self, query: str | RerankQuery, candidates: Sequence[Candidate]) -> np.ndarray:
        query = as_query(query)
        encoding = query.encoding_for(self.side.model_id)
        if encoding is None:
            _, text_tokens, text_mask = self.side.encode([query.text])
        else:
            text_tokens, text_mask = encoding
        cached = self.tokens.get_tokens([c.id for c in candidates])
        if len(cached) < len(candidates):
            raise FastPathUnavailable("some hits have no cached reranker tokens")
        image_tokens = np.stack([cached[c.id] for c in candidates])  # (k, T, W)
        return self.side.match_logits(text_tokens, text_mask, image_tokens)


def fast_search(store: VectorStore, side: QuerySide, request: FastSearch) -> SearchResults:
    """The best ``request.k`` images for a text query, on the one route every search
    takes (``search.route.run_query``), reranked by the exported cross-encoder."""
    rerank, _ = reranks(request, side)
    query = clean_query(request.query)
    check_k(request.k)
    started = time.perf_counter()
    vectors, tokens, mask = side.encode([query])
    timings = {"encode_ms": ms_since(started)}
    step = None
    if rerank:
        weight = side.bi_weight if request.bi_weight is None else request.bi_weight
        step = RerankStep(ExportedReranker(side, store),
                          RerankQuery(query, (tokens, mask), side.model_id),
                          request.rerank_top_k, weight)
    return run_query(store, vectors[0], request.k, filters=request.filters, rerank=step,
                     timings=timings)


def reranks(request: FastSearch, side: QuerySide) -> tuple[bool, str | None]:
    """Whether the fast path reranks ``request`` (and a note when it does not), by the
    rule every search follows (``rerank.registry.default_reranker``); raises ``NeedsTorch``
    for what only torch runs (another reranker, an untrained head asked for by name)."""
    spec = request.reranker.strip().lower()
    if not request.rerank or spec == "none":
        return False, None
    if spec == "auto":
        spec, note = default_reranker(side)
        return spec != "none", note
    if spec != "fused":
        raise NeedsTorch(f"the {spec.partition(':')[0]} reranker runs in torch")
    if not side.reranker_trained and not untrained_allowed():
        raise NeedsTorch("this collection's reranker is untrained")  # torch says so
    return True, forced_note(side)


def run_fast_search(collection: Path, request: FastSearch,
                    threads: int | None = None) -> tuple[SearchResults, str | None]:
    """Open the collection at ``collection`` and its export, and search it: the hits, and
    a note when they were not reranked although reranking was on (an untrained head).

    Raises ``FastPathUnavailable`` before anything is searched when the export cannot
    serve it (the caller falls back to the torch path), and ``NeedsTorch`` when there is
    no collection (the torch path says so in its own words).
    """
    from twinrank.store import open_store, read_info

    info = read_info(collection)
    if info is None:
        raise NeedsTorch("there is no collection there")
    side = open_query_side(collection, info, threads)
    _, note = reranks(request, side)  # refuses before the store opens
    with open_store(collection) as store:
        return fast_search(store, side, request), note

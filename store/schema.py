"""What every store back end shares: the collection's identity, records, errors, the seam.

One collection per (corpus, model). Named vectors per point: ``image`` (dense, cosine,
HNSW) and, on a server, ``tokens`` (the reranker's cached image tokens: a float16
multivector with no index, on disk). An embedded collection keeps those tokens in a
memory-mapped side file instead (``store.tokens``; ``CollectionInfo.token_layout``).
Payload indexes on the fields users filter by (``search.filters.INDEXED_FIELDS``).
Both back ends (``search.edge`` embedded, ``search.remote`` by URL) build this schema and
answer the same queries with the same points and tokens.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Protocol, Self

import numpy as np

from twinrank.store.filters import ImagePayload, SearchFilter, indexed_payload

SCHEMA_VERSION = 1

# Search policy shared by both back ends (measured in bench/store_bench.py and
# bench/ann_bench.py). Text queries sit far from image vectors (the modality gap) and HNSW
# built on image vectors loses recall on them: at 1M points recall@20 was 0.35-0.66 at
# hnsw_ef 128-512 (issue 20). So a collection also indexes ``centred`` (each image vector
# minus the collection's mean image vector, renormalised): the image cone becomes a cloud
# around the origin, so a text query is no longer out of its distribution. The text query
# itself is *not* centred: <text, image> = <text, image - mean> + a constant per query, so
# its ranking over ``centred`` differs from the exact one only by the renormalisation
# (|image - mean| varies by ~2%), whereas subtracting a text mean adds a per-image term
# (-<text mean, centred image>) that reorders the neighbours: with an exact first stage at
# 20k synthetic points, recall@20 was 1.0 from 40 candidates for the plain text vector and
# 0.90 at 400 with the text mean subtracted (bench/ann_bench.py --ceiling-only). The
# candidates are rescored exactly on ``image`` in the same request.
EXACT_SEARCH_BELOW = 20_000  # points; exact search here costs ~1-2 ms and recall is 1.0
HNSW_EF_MIN = 128  # beam width for the HNSW search above that size...
HNSW_EF_PER_RESULT = 8  # ...and at least this many candidates per requested result
# Text queries across the gap on a collection whose text search was not measured yet
# (below): exact under EXACT_RETRY_BELOW points, else two stages with at least this many
# candidates from ``centred`` (through its int8 copy), and this many per requested result.
TWO_STAGE_CANDIDATES_MIN = 1600
TWO_STAGE_PER_RESULT = 80
# The ``centred`` graph is built denser than Qdrant's default (m 16, ef_construct 100): a
# text query's walk through it starts far from its neighbours. At 1M synthetic CLIP-like
# points (bench/ann_probe.py) recall@20 was 0.989 with 1,600 candidates (13.7 ms) and
# 0.993 with 3,200 (21 ms) on the default graph, 0.991 with 800 (10.9 ms) on this one,
# whose build took 5x longer (22 min against 4.5 on 2 cores).
CENTRED_HNSW_M = 32
CENTRED_EF_CONSTRUCT = 256
# Which plan an unfiltered gap-crossing text query gets is measured on each collection
# (``StoreBase.calibrate_text_search``, run by ingest): the model's encodings of generic
# captions are searched exactly and in two stages at growing beam widths (hnsw_ef) on
# ``centred``; the first width whose recall@CALIBRATION_K against the exact answer reaches
# TEXT_RECALL_TARGET is kept if its median time beats the exact scan's, else the exact
# scan is. The measurement stands until the collection has grown RECALIBRATE_GROWTH times
# past the size it was taken at; before the first one (and after that) the size rule
# above applies. Filtered queries, text or image, are searched exactly: under a filter
# passing 7.5% of the points, the two stages found 0.33 of a text query's top 20 at 1M
# points, HNSW on ``image`` 0.94 of an image query's at 100k (payload indexes made before
# the graph) and 0.06 at 1M (made after it), since the filter cuts the graphs' links; the
# exact scan, which reads only the points the payload index selects, found all of them in
# 4.5 ms at 100k and 41-53 ms at 1M (bench/ann_bench.py); Qdrant's ACORN walk, which tries
# the neighbours of a neighbour the filter rejects, found 0.99 of a text query's top 20 at
# 1M but in 560 ms (bench/results/ann_bench_1m_acorn.json). However wide the beam, only
# RESCORED_PER_RESULT candidates per result go on to exact rescoring: at 1M points, beam
# 800 with 200 candidates had the recall of beam 800 with 800 (0.9875) in 6.2 ms, not 10.0.
# Image queries on such a collection take two stages as well, with a fixed beam: on the
# synthetic clusters at 1M points HNSW on ``image`` (m 16) found 0.906 of the top 20 at
# ef 160 and 0.933 at ef 512, the denser ``centred`` graph with a beam of 400 all of them
# in 4.1 ms; at 100k both found all, 2.5 ms against 2.7.
# Since no filtered query walks a graph, the payload indexes are made without Qdrant's
# extra graph links per indexed value (``enable_hnsw``), which it otherwise builds when the
# indexes exist before the graph, as ingest makes them: at 100k points the graphs took
# 90 s instead of 146 s (medians of two pairs, bench/results/build_links.json).
PAYLOAD_GRAPH_LINKS = False
IMAGE_BEAM_MIN = 400
IMAGE_BEAM_PER_RESULT = 20
TEXT_RECALL_TARGET = 0.99
CALIBRATION_K = 20
CALIBRATION_EFS = (100, 150, 200, 300, 400, 600, 800, 1200, 1600, 2400, 3200)
RECALIBRATE_GROWTH = 2
RESCORED_PER_RESULT = 10
# Collections made before ``centred`` existed keep the old fallback for far queries.
FAR_QUERY_COSINE = 0.5  # best hit below this: the query is out of distribution
EXACT_RETRY_BELOW = 1_000_000  # points; a far query is re-run exactly below this size
FAR_QUERY_EF = 1024  # and with this beam above it
# The image mean is recomputed when a collection has grown this many times past the size
# it was computed at; the ``centred`` vectors are rewritten only when it moved this far.
IMAGE_MEAN_REGROWTH = 4
IMAGE_MEAN_TOLERANCE = 0.05  # L2 distance between the old and the new mean
# Points given their folder-and-type pairs per write when an older collection is upgraded
# (``StoreBase.pair_folders_and_types``): one write per batch of points with the same pairs.
PAIRING_BATCH = 1000
# Text queries cross the gap (and go two-stage) only when the images sit in a cone
# (|image mean| at least CONE_MIN_NORM; CLIP-like synthetic vectors: 0.63) and the texts
# lie outside it (the text mean's dot with the image mean under GAP_FRACTION of the
# images' own, |image mean|^2; synthetic: 0.34 of it). A model whose images spread over
# the sphere (the shipped demo model: |image mean| 0.08) has no gap to cross, and
# centring there only distorts the ranking (recall@20 0.88 with 100 of 900 candidates
# against 1.0 for plain HNSW).
CONE_MIN_NORM = 0.25
GAP_FRACTION = 0.75

IMAGE_VECTOR = "image"
CENTRED_VECTOR = "centred"
TOKENS_VECTOR = "tokens"
# Where an embedded collection keeps its cached tokens (``CollectionInfo.token_layout``).
TOKENS_IN_FILE = "file"  # the side file of ``store.tokens``: new collections
TOKENS_IN_QDRANT = "multivector"  # the ``tokens`` multivector: collections made before it


class StoreError(RuntimeError):
    """A store problem a user can act on; the message says what to do."""


class CollectionMismatchError(StoreError):
    """The collection was built with another model."""


class StoreBusyError(StoreError):
    """Another process holds the embedded store open."""


@dataclass(frozen=True)
class CollectionInfo:
    """What a collection was built with."""

    model_id: str
    vector_size: int
    token_count: int
    token_width: int
    token_dtype: str = "float16"
    schema_version: int = SCHEMA_VERSION
    model_source: str = ""  # how to load the model: a name, a folder, or a file
    model_pretrained: str | None = None  # open_clip pretrained tag, when the source is a name
    # The modality gap (search policy above): the model's mean text vector, given when the
    # collection is created (``models.gap``), and the collection's own mean image vector,
    # computed by the store from what it holds and at how many points. Without a text
    # mean the collection has no ``centred`` vector (made before it existed).
    text_mean: tuple[float, ...] | None = None
    image_mean: tuple[float, ...] | None = None
    image_mean_points: int = 0
    # The measured plan for gap-crossing text queries (``calibrate_text_search``): None
    # until measured; 0 for the exact scan, else the first stage's beam width (hnsw_ef)
    # at CALIBRATION_K results; the collection's size then.
    text_ef: int | None = None
    text_plan_points: int = 0
    # Whether every point carries ``folder_formats`` (made since it exists), so a folder
    # and type filter is one keyword match (``SearchFilter.conditions``); older
    # collections keep the two conditions.
    folder_formats: bool = True
    # Where an embedded (Qdrant Edge) collection keeps its cached tokens: TOKENS_IN_FILE
    # (made since the side file exists: 20 BLIP-size sets read in milliseconds) or
    # TOKENS_IN_QDRANT (older ones, still read and written that way). A field rather than
    # a new SCHEMA_VERSION, which ``check_info`` would refuse for older collections. A
    # server collection keeps the on-disk multivector whatever this says (``store.remote``).
    token_layout: str = TOKENS_IN_FILE

    def __post_init__(self) -> None:
        for name in ("text_mean", "image_mean"):  # JSON gives lists; keep it hashable
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(float(x) for x in value))

    @property
    def centred(self) -> bool:
        """Whether the collection indexes the ``centred`` vector for text queries."""
        return self.text_mean is not None

    def bytes_per_image(self) -> int:
        """Bytes of cached reranker tokens per image (16 x 256 fp16 = 8 kB for ViT-B-32)."""
        return self.token_count * self.token_width * np.dtype(self.token_dtype).itemsize

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CollectionInfo:
        """Read a stored identity, ignoring keys a newer twinrank may have added."""
        known = {f.name for f in fields(cls)}
        found = {k: v for k, v in data.items() if k in known}
        found.setdefault("folder_formats", False)  # stored before the field existed
        found.setdefault("token_layout", TOKENS_IN_QDRANT)  # likewise
        return cls(**found)


@dataclass
class PointRecord:
    """One image as stored: its vector, its cached tokens and its payload."""

    id: str
    image_vector: np.ndarray  # (D,) float32, L2-normalised
    image_tokens: np.ndarray | None  # (T, W), stored as float16
    payload: ImagePayload


@dataclass(frozen=True)
class StoredHit:
    id: str
    score: float
    payload: ImagePayload


class VectorStore(Protocol):
    """What search, rerank, ingest and the UI need from a store."""

    info: CollectionInfo

    def upsert(self, records: Sequence[PointRecord]) -> None: ...
    def set_payload(self, point_id: str, payload: ImagePayload) -> None: ...
    def delete(self, ids: Sequence[str]) -> None: ...
    def search(
        self, vector: np.ndarray, limit: int, search_filter: SearchFilter | None = None,
        plan: SearchPlan | None = None, modality: str = "image",
    ) -> list[StoredHit]: ...
    def get_tokens(self, ids: Sequence[str]) -> dict[str, np.ndarray]: ...
    def get_vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]: ...
    def get_payloads(self, ids: Sequence[str]) -> dict[str, ImagePayload]: ...
    def iter_payloads(self) -> Iterator[tuple[str, ImagePayload]]: ...
    def count(self) -> int: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...
    def __enter__(self) -> VectorStore: ...
    def __exit__(self, *exc: object) -> None: ...
    def ensure_room(self, images: int) -> None: ...


class StoreBase:
    """What both back ends share on top of their own calls: reading the two named vectors
    (``image``, ``tokens``) and use as a context manager that closes the store."""

    def get_tokens(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """The cached (T, W) tokens of those ``ids`` that have them (float16 or float32
        by back end: callers convert). The multivector's way; ``EdgeStore`` reads its
        side file instead."""
        return self._named_vectors(ids, TOKENS_VECTOR)

    def get_vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        return self._named_vectors(ids, "image")

    def _named_vectors(self, ids: Sequence[str], name: str) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def ensure_room(self, images: int) -> None:
        """Raise ``DiskFullError`` (``store.space``) unless ``images`` more images fit on
        the store's disk. A server watches its own disk: nothing to check from here."""
        return None

    # The modality gap: both back ends keep ``centred`` and the image mean the same way.
    info: CollectionInfo

    def count(self) -> int:
        raise NotImplementedError

    def _save_info(self, info: CollectionInfo) -> None:
        """Record a new identity (the image mean changed) with the collection."""
        raise NotImplementedError

    def _image_pages(self) -> Iterator[tuple[list[str], np.ndarray]]:
        """Every stored point's id and ``image`` vector, a page at a time."""
        raise NotImplementedError

    def _write_centred(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Overwrite the ``centred`` vector of existing points, leaving the rest."""
        raise NotImplementedError

    def _centred_for(self, records: Sequence[PointRecord]) -> np.ndarray | None:
        """The ``centred`` vectors of records about to be written; None without that vector.

        The first write sets the image mean from its own images; ``refresh_image_mean``
        corrects it as the collection grows.
        """
        if not self.info.centred or not records:
            return None
        images = np.stack([r.image_vector for r in records]).astype(np.float32)  # (B, D)
        if self.info.image_mean is None:
            self._save_info(replace(self.info, image_mean=tuple(images.mean(0).tolist()),
                                    image_mean_points=len(records)))
        assert self.info.image_mean is not None
        return centre(images, self.info.image_mean)

    def refresh_image_mean(self, force: bool = False) -> bool:
        """Recompute the mean image vector once the collection has grown
        ``IMAGE_MEAN_REGROWTH`` times past the size it was computed at (or when ``force``),
        and rewrite the ``centred`` vectors, only those, if the mean moved more than
        ``IMAGE_MEAN_TOLERANCE``. Returns whether they were rewritten.

        Example:
            >>> store.refresh_image_mean(force=True)  # after a large delete, say
            False
        """
        info = self.info
        if not info.centred or info.image_mean is None:
            return False
        if not force and self.count() < IMAGE_MEAN_REGROWTH * max(info.image_mean_points, 1):
            return False
        total, points = np.zeros(info.vector_size, dtype=np.float64), 0
        for ids, vectors in self._image_pages():
            total += vectors.sum(axis=0, dtype=np.float64)
            points += len(ids)
        if points == 0:
            return False
        mean = (total / points).astype(np.float32)
        moved = float(np.linalg.norm(mean - np.asarray(info.image_mean))) > IMAGE_MEAN_TOLERANCE
        if moved:
            for ids, vectors in self._image_pages():
                self._write_centred(ids, centre(vectors, mean))
            info = replace(info, image_mean=tuple(mean.tolist()))
        self._save_info(replace(info, image_mean_points=points))
        return moved

    def search(self, vector: np.ndarray, limit: int, search_filter: SearchFilter | None = None,
               plan: SearchPlan | None = None, modality: str = "image") -> list[StoredHit]:
        raise NotImplementedError

    def iter_payloads(self) -> Iterator[tuple[str, ImagePayload]]:
        raise NotImplementedError

    def _index_field(self, name: str) -> None:
        """Create the payload index of one of ``INDEXED_FIELDS`` (kept if it exists)."""
        raise NotImplementedError

    def _set_payload_fields(self, ids: Sequence[str], fields: dict[str, Any]) -> None:
        """Set ``fields`` on the payloads of ``ids``, leaving their other keys."""
        raise NotImplementedError

    def pair_folders_and_types(self) -> int:
        """Upgrade a collection made before ``folder_formats`` existed: index it, give
        every point its folder-and-type pairs, then record in the identity that they are
        there, so a filter on a folder and file types becomes one keyword match (2.5 times
        faster at 1M points, ``bench/results/filter_bench_1m.json``). Until the identity
        says so, filters keep the two conditions, which stay correct; so an interrupted
        upgrade loses nothing, and the next call finishes it. Points sharing their pairs are
        written together, about one write per ``PAIRING_BATCH`` points. Qdrant moves every
        point whose payload is rewritten out of its indexed segment, so an embedded store's
        index is to be rebuilt after (``ingest.runner.upgrade_collection`` does both;
        ``bench/results/payload_rewrite.json``). Returns how many points were given pairs:
        0 when the collection has them.

        Example:
            >>> store.info.folder_formats  # made since the pairs exist: nothing to do
            True
            >>> store.pair_folders_and_types()  # (an older one: the points it paired)
            0
        """
        if self.info.folder_formats:
            return 0
        self._index_field("folder_formats")
        pending: dict[tuple[str, ...], list[str]] = {}
        paired = 0
        for point_id, payload in self.iter_payloads():
            pairs = indexed_payload(payload).get("folder_formats")
            if not pairs or payload.get("folder_formats") == pairs:
                continue
            ids = pending.setdefault(tuple(pairs), [])
            ids.append(point_id)
            paired += 1
            if len(ids) >= PAIRING_BATCH:
                self._set_payload_fields(pending.pop(tuple(pairs)), {"folder_formats": pairs})
        for pairs_key, ids in pending.items():
            self._set_payload_fields(ids, {"folder_formats": list(pairs_key)})
        self._save_info(replace(self.info, folder_formats=True))
        return paired

    def calibrate_text_search(self, queries: np.ndarray) -> TextCalibration | None:
        """Measure which plan text queries should take on this collection, and keep it.

        ``queries`` are text vectors of the collection's model (ingest passes its
        encodings of ``models.gap.CALIBRATION_CAPTIONS``). Each is searched exactly, then in
        two stages at each beam width of ``CALIBRATION_EFS`` until recall@CALIBRATION_K
        against the exact answers reaches ``TEXT_RECALL_TARGET``; that count is kept if
        its median time beats the exact scan's, else the exact scan is. None (nothing
        measured) below ``EXACT_SEARCH_BELOW`` points or when texts do not cross a gap.

        Example:
            >>> print(store.calibrate_text_search(np.stack([query_vector])))  # 6 images
            None
        """
        points = self.count()
        if points < EXACT_SEARCH_BELOW or not crosses_gap(self.info) or not len(queries):
            return None
        queries = unit_rows(np.asarray(queries, dtype=np.float32))

        def timed(plan: SearchPlan) -> tuple[list[set[str]], float]:
            self.search(queries[0], CALIBRATION_K, plan=plan, modality="text")  # warm-up
            found, times = [], []
            for query in queries:
                started = time.perf_counter()
                hits = self.search(query, CALIBRATION_K, plan=plan, modality="text")
                times.append((time.perf_counter() - started) * 1000)
                found.append({hit.id for hit in hits})
            return found, float(np.median(times))

        truth, exact_ms = timed(SearchPlan(exact=True, hnsw_ef=None))
        tried: dict[int, tuple[float, float]] = {}
        chosen = 0
        for candidates in CALIBRATION_EFS:
            found, two_stage_ms = timed(two_stage_plan(candidates, CALIBRATION_K))
            recall = float(np.mean([len(f & t) / max(len(t), 1)
                                    for f, t in zip(found, truth, strict=True)]))
            tried[candidates] = (round(recall, 4), round(two_stage_ms, 3))
            if recall >= TEXT_RECALL_TARGET:
                chosen = candidates if two_stage_ms < exact_ms else 0
                break
        self._save_info(replace(self.info, text_ef=chosen, text_plan_points=points))
        return TextCalibration(points, len(queries), chosen, round(exact_ms, 3), tried)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class SearchPlan:
    """How one kNN query runs: exactly, HNSW with beam width ``hnsw_ef``, or in two stages.

    Two stages (``candidates`` > 0): HNSW on ``centred`` fetches ``candidates`` points
    for the centred query, then Qdrant scores exactly those points on ``image`` and keeps
    the best: the answer is the exact top-k whenever the candidates hold it.
    """

    exact: bool
    hnsw_ef: int | None
    candidates: int = 0


@dataclass(frozen=True)
class TextCalibration:
    """What ``calibrate_text_search`` measured: the plan it chose (``candidates``: the
    first stage's beam width, 0 for the exact scan), the exact scan's median ms, and
    (recall, median ms) per beam width tried."""

    points: int
    queries: int
    candidates: int
    exact_ms: float
    tried: dict[int, tuple[float, float]]

    def summary(self) -> str:
        """One line for a user, e.g. for ingest's report."""
        if self.candidates:
            recall, ms = self.tried[self.candidates]
            plan = (f"two stages, a beam of {self.candidates} (recall@{CALIBRATION_K} "
                    f"{recall:.3f}, {ms:.1f} ms against {self.exact_ms:.1f} ms exact)")
        elif self.tried and max(r for r, _ in self.tried.values()) >= TEXT_RECALL_TARGET:
            plan = f"the exact scan ({self.exact_ms:.1f} ms; two stages were no faster)"
        else:
            best = max((r for r, _ in self.tried.values()), default=0.0)
            plan = (f"the exact scan ({self.exact_ms:.1f} ms; two stages reached recall "
                    f"{best:.3f} < {TEXT_RECALL_TARGET})")
        return f"text search over {self.points:,} images, measured with {self.queries} " \
               f"captions: {plan}"


def search_plan(points: int, limit: int, modality: str = "image",
                across_gap: bool = False, measured: CollectionInfo | None = None,
                filtered: bool = False) -> SearchPlan:
    """The shared policy: exact below ``EXACT_SEARCH_BELOW`` points or with a payload
    filter (``filtered``); on a collection whose texts cross a modality gap
    (``across_gap``, see ``crosses_gap``), a text query as the collection's measurement
    chose (``measured``: its ``text_ef``, scaled to ``limit``), or, unmeasured, exactly
    below ``EXACT_RETRY_BELOW`` and in two stages above it, and an image query in two
    stages with a beam of ``IMAGE_BEAM_MIN`` or more; anything else plain HNSW.

    Example:
        >>> search_plan(5_000, 20)
        SearchPlan(exact=True, hnsw_ef=None, candidates=0)
        >>> search_plan(1_000_000, 20, modality="text", across_gap=True)
        SearchPlan(exact=False, hnsw_ef=1600, candidates=1600)
        >>> info = CollectionInfo("m", 2, 1, 1, text_ef=200, text_plan_points=90_000)
        >>> search_plan(100_000, 40, modality="text", across_gap=True, measured=info)
        SearchPlan(exact=False, hnsw_ef=400, candidates=400)
        >>> search_plan(100_000, 20, modality="text", across_gap=True, measured=info,
        ...             filtered=True)
        SearchPlan(exact=True, hnsw_ef=None, candidates=0)
        >>> search_plan(1_000_000, 20, modality="image", across_gap=True)
        SearchPlan(exact=False, hnsw_ef=400, candidates=200)
    """
    if points < EXACT_SEARCH_BELOW or filtered:  # a filter cuts the graphs' links
        return SearchPlan(exact=True, hnsw_ef=None)
    if modality == "image" and across_gap:
        return two_stage_plan(max(IMAGE_BEAM_MIN, IMAGE_BEAM_PER_RESULT * limit), limit)
    if modality == "text" and across_gap:
        chosen = measured_text_ef(measured, points)
        if chosen == 0:
            return SearchPlan(exact=True, hnsw_ef=None)
        if chosen is not None:
            return two_stage_plan(max(chosen, -(-chosen * limit // CALIBRATION_K)), limit)
        if points < EXACT_RETRY_BELOW:
            return SearchPlan(exact=True, hnsw_ef=None)  # no HNSW attempt to be retried
        candidates = max(TWO_STAGE_CANDIDATES_MIN, TWO_STAGE_PER_RESULT * limit)
        return SearchPlan(exact=False, hnsw_ef=candidates, candidates=candidates)
    return SearchPlan(exact=False, hnsw_ef=max(HNSW_EF_MIN, HNSW_EF_PER_RESULT * limit))


def two_stage_plan(hnsw_ef: int, limit: int) -> SearchPlan:
    """Two stages: a beam of ``hnsw_ef`` on ``centred``, of which the best
    ``RESCORED_PER_RESULT * limit`` go on to exact rescoring."""
    return SearchPlan(exact=False, hnsw_ef=hnsw_ef,
                      candidates=min(hnsw_ef, RESCORED_PER_RESULT * limit))


def measured_text_ef(info: CollectionInfo | None, points: int) -> int | None:
    """The measured choice for text queries (0: exact) while it still describes a
    collection of ``points``; None when there is none or it is out of date."""
    if info is None or info.text_ef is None:
        return None
    if points > RECALIBRATE_GROWTH * max(info.text_plan_points, 1):
        return None
    return info.text_ef


def calibration_due(info: CollectionInfo, points: int) -> bool:
    """Whether text search on a collection of ``points`` should be measured (again)."""
    return (points >= EXACT_SEARCH_BELOW and crosses_gap(info)
            and measured_text_ef(info, points) is None)


def far_query_plan(points: int) -> SearchPlan:
    """How a far (out-of-distribution) query is searched again."""
    return SearchPlan(exact=points < EXACT_RETRY_BELOW, hnsw_ef=FAR_QUERY_EF)


def planned_search(
    run: Callable[[SearchPlan], list[StoredHit]],
    points: int,
    limit: int,
    plan: SearchPlan | None = None,
    modality: str = "image",
    across_gap: bool = False,
    measured: CollectionInfo | None = None,
    filtered: bool = False,
) -> list[StoredHit]:
    """Run a kNN query under the shared policy; an explicit ``plan`` is run as given.

    A far query (best cosine under ``FAR_QUERY_COSINE`` after plain HNSW) is run again
    with ``far_query_plan``: the fallback for collections without a ``centred`` vector.
    """
    if modality not in ("image", "text"):
        raise ValueError(f"modality is 'image' or 'text', not {modality!r}")
    if plan is not None:
        return run(plan)
    first = search_plan(points, limit, modality, across_gap, measured, filtered)
    hits = run(first)
    if not first.exact and not first.candidates and (not hits or hits[0].score
                                                     < FAR_QUERY_COSINE):
        return run(far_query_plan(points))
    return hits


def crosses_gap(info: CollectionInfo) -> bool:
    """Whether text queries lie across a modality gap from the collection's image cone
    (see ``CONE_MIN_NORM``): then plain HNSW on ``image`` loses them and ``centred``
    finds them.

    Example:
        >>> crosses_gap(CollectionInfo("m", 2, 1, 1, text_mean=(0.0, 0.9),
        ...                            image_mean=(0.6, 0.0)))
        True
    """
    if info.text_mean is None or info.image_mean is None:
        return False
    image_mean = np.asarray(info.image_mean, dtype=np.float32)
    cone = float(image_mean @ image_mean)  # the images' mean dot with their own mean
    if cone < CONE_MIN_NORM**2:
        return False
    return float(np.asarray(info.text_mean, dtype=np.float32) @ image_mean) < GAP_FRACTION * cone


def query_for_centred(vector: np.ndarray, info: CollectionInfo, modality: str) -> np.ndarray:
    """The first-stage query over ``centred``: a text vector as it is (see the policy notes
    above), an image vector minus the image mean, renormalised like the images."""
    if info.text_mean is None or info.image_mean is None:
        raise StoreError("This collection has no centred vector (made before twinrank "
                         "indexed one); search it without a two-stage plan.")
    if modality == "text":
        return unit_rows(vector)
    return centre(vector, info.image_mean)


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (a zero row stays zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def centre(vectors: np.ndarray, mean: Sequence[float] | np.ndarray) -> np.ndarray:
    """Vectors minus a modality's mean, renormalised: images for ``centred``, or a text
    query with the model's text mean.

    Example:
        >>> centre(np.array([[1.0, 1.0]]), [0.0, 1.0]).tolist()
        [[1.0, 0.0]]
    """
    return unit_rows(np.asarray(vectors, dtype=np.float32) - np.asarray(mean, dtype=np.float32))


def point_id_for(content_hash: str) -> str:
    """Point ids come from file content: the same bytes under two names are one point."""
    return str(uuid.UUID(hex=content_hash[:32]))


def file_content_hash(path: Path) -> str:
    """sha256 of a file's bytes, read in blocks: the hash ``point_id_for`` takes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_info(found: CollectionInfo, wanted: CollectionInfo | None, where: str) -> None:
    """Refuse to open a collection with a model (or schema) other than its own."""
    if wanted is None:
        return
    if found.model_id != wanted.model_id:
        raise CollectionMismatchError(
            f"The collection at {where} was built with model {found.model_id!r}, not "
            f"{wanted.model_id!r}. Leave out --model (ingest then uses the collection's own "
            f"model), or ingest into a new --store."
        )
    if found.schema_version != wanted.schema_version:
        raise CollectionMismatchError(
            f"The collection at {where} has schema version {found.schema_version}; this "
            f"twinrank writes version {wanted.schema_version}. Re-ingest into a new --store."
        )

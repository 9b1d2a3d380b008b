"""A Qdrant server, cluster or Qdrant Cloud through qdrant-client: the back end by URL.

Same schema as the embedded store: named vectors ``image`` (cosine, HNSW) and ``tokens``
(float16 multivector, no index, on disk; an embedded collection keeps these tokens in a
side file instead, ``store.tokens``), the same payload indexes, and the collection's identity
stored *with the collection* (Qdrant collection metadata, server 1.16+), so a server
collection is as self-describing as an embedded folder.

The API key comes from the ``api_key`` argument or the ``TWINRANK_QDRANT_API_KEY``
environment variable; it is never printed, logged or put in an error message.

qdrant-client's local mode stands in for the server in tests: ``url=":memory:"`` or
``url="path:DIR"``. It is a brute-force test double (see bench/store_bench.py), not an engine.
"""

from __future__ import annotations

import functools
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar, cast

import numpy as np

from twinrank.store.filters import INDEXED_FIELDS, ImagePayload, SearchFilter, indexed_payload
from twinrank.store.schema import (
    CENTRED_EF_CONSTRUCT,
    CENTRED_HNSW_M,
    CENTRED_VECTOR,
    IMAGE_VECTOR,
    PAYLOAD_GRAPH_LINKS,
    TOKENS_VECTOR,
    CollectionInfo,
    PointRecord,
    SearchPlan,
    StoreBase,
    StoreBusyError,
    StoredHit,
    StoreError,
    check_info,
    crosses_gap,
    planned_search,
    query_for_centred,
)

API_KEY_ENV = "TWINRANK_QDRANT_API_KEY"
DEFAULT_COLLECTION = "twinrank"
TIMEOUT_S = 5  # a server that does not answer in this long is reported, not waited for
COUNT_TTL_S = 30.0  # how stale the point count that picks exact vs HNSW search may be
METADATA_KEY = "twinrank"


@dataclass(frozen=True)
class ClusterLayout:
    """How a new collection is spread over a Qdrant cluster (None: the server's default).

    ``shards`` split the points across nodes (fixed when the collection is created);
    ``replicas`` copies of each shard; ``write_consistency`` replicas that must accept a
    write before it is acknowledged. Applied when the collection is created.
    """

    shards: int | None = None
    replicas: int | None = None
    write_consistency: int | None = None

    def create_args(self) -> dict[str, int | None]:
        """The keyword arguments of qdrant-client's ``create_collection``."""
        return {"shard_number": self.shards, "replication_factor": self.replicas,
                "write_consistency_factor": self.write_consistency}


T = TypeVar("T")


def is_remote_location(location: object) -> bool:
    """Whether a store location names the qdrant-client back end rather than a folder."""
    text = str(location)
    return text.startswith(("http://", "https://", "path:")) or text == ":memory:"


class RemoteStore(StoreBase):
    """One collection on a Qdrant server (or qdrant-client's local mode in tests).

    Example:
        >>> store = RemoteStore.open("https://xyz.cloud.qdrant.io:6333", info,
        ...                          collection="photos")  # doctest: +SKIP
        >>> store = RemoteStore.open(":memory:", info)  # qdrant-client's local mode
        >>> store.search(query_vector, limit=20)  # nothing ingested yet
        []
    """

    def __init__(self, client: Any, collection: str, info: CollectionInfo, where: str) -> None:
        self.info = info
        self.collection = collection
        self.where = where
        self._client = client
        local = where == ":memory:" or where.startswith("path:")
        self._local = local  # qdrant-client's local mode: exact only, and not thread-safe
        self._serial = threading.Lock() if local else None
        self._count: tuple[int, float] | None = None

    @classmethod
    def open(
        cls,
        url: str,
        info: CollectionInfo | None = None,
        collection: str | None = None,
        api_key: str | None = None,
        layout: ClusterLayout | None = None,
    ) -> RemoteStore:
        """Open ``collection`` at ``url``; create it when ``info`` is given and it is new
        (spread as ``layout`` says).

        Nothing is written before the server has answered and accepted the key.
        """
        collection = collection or DEFAULT_COLLECTION
        client = make_client(url, api_key)
        where = f"{_safe_url(url)} (collection {collection!r})"
        exists = _guard(url, lambda: client.collection_exists(collection))
        if not exists:
            if info is None:
                raise StoreError(
                    f"No collection {collection!r} at {_safe_url(url)}. Create it with "
                    f"`twinrank ingest IMAGES --url {_safe_url(url)} --collection {collection}`."
                )
            _guard(url, lambda: _create_collection(client, collection, info, layout))
            return cls(client, collection, info, url)
        metadata = _guard(url, lambda: client.get_collection(collection).config.metadata) or {}
        if METADATA_KEY not in metadata:
            raise StoreError(
                f"The collection {collection!r} at {_safe_url(url)} has no twinrank metadata "
                f"(made by another tool, or a Qdrant server older than 1.16). Use another "
                f"--collection."
            )
        found = CollectionInfo.from_dict(metadata[METADATA_KEY])
        check_info(found, info, where)
        return cls(client, collection, found, url)

    def upsert(self, records: Sequence[PointRecord]) -> None:
        from qdrant_client import models

        if not records:
            return
        centred = self._centred_for(records)
        points = []
        for i, record in enumerate(records):
            vectors: dict[str, Any] = {
                IMAGE_VECTOR: record.image_vector.astype(np.float32).tolist()}
            if centred is not None:  # rounded as the server stores them
                vectors[CENTRED_VECTOR] = centred[i].astype(np.float16).astype(np.float32).tolist()
            if record.image_tokens is not None:  # rounded as a server stores them
                tokens = record.image_tokens.astype(np.float16).astype(np.float32)
                vectors[TOKENS_VECTOR] = tokens.tolist()
            points.append(models.PointStruct(id=record.id, vector=vectors,
                                             payload=indexed_payload(record.payload)))
        self._call(lambda: self._client.upsert(self.collection, points=points, wait=True))
        self._count = None
        self.refresh_image_mean()

    def set_payload(self, point_id: str, payload: ImagePayload) -> None:
        self._call(lambda: self._client.overwrite_payload(
            self.collection, payload=indexed_payload(payload), points=[point_id],
            wait=True))

    def _set_payload_fields(self, ids: Sequence[str], fields: dict[str, Any]) -> None:
        self._call(lambda: self._client.set_payload(self.collection, payload=fields,
                                                    points=list(ids), wait=True))

    def _index_field(self, name: str) -> None:
        self._call(lambda: _create_indexes(self._client, self.collection, [name]))

    def delete(self, ids: Sequence[str]) -> None:
        from qdrant_client import models

        if ids:
            selector = models.PointIdsList(points=list(ids))
            self._call(lambda: self._client.delete(self.collection, selector, wait=True))
            self._count = None

    def search(
        self,
        vector: np.ndarray,
        limit: int,
        search_filter: SearchFilter | None = None,
        plan: SearchPlan | None = None,
        modality: str = "image",
    ) -> list[StoredHit]:
        """The ``limit`` nearest images to an image or text vector (``modality``); ``plan``
        overrides the policy (``schema.search_plan``). Scores are cosines to ``image``."""
        from qdrant_client import models

        vector = np.asarray(vector, dtype=np.float32)
        info = self.info
        condition = client_filter(search_filter, info.folder_formats)

        def run(chosen: SearchPlan) -> list[StoredHit]:
            params = None if self._local else models.SearchParams(
                exact=chosen.exact, hnsw_ef=chosen.hnsw_ef,  # candidates are rescored on
                quantization=models.QuantizationSearchParams(ignore=True)  # the originals
                if chosen.candidates else None)
            prefetch = None
            if chosen.candidates:
                centred = query_for_centred(vector, info, modality)
                first = None if self._local else models.SearchParams(  # int8 picks
                    exact=chosen.exact, hnsw_ef=chosen.hnsw_ef,
                    quantization=models.QuantizationSearchParams(rescore=False))
                prefetch = models.Prefetch(query=centred.tolist(), using=CENTRED_VECTOR,
                                           limit=chosen.candidates, filter=condition,
                                           params=first)
            response = self._call(lambda: self._client.query_points(
                self.collection, query=vector.tolist(), using=IMAGE_VECTOR, limit=limit,
                prefetch=prefetch, query_filter=condition, search_params=params,
                with_payload=True))
            return [StoredHit(str(p.id), float(p.score), _payload(p.payload))
                    for p in response.points]

        return planned_search(run, self._cached_count(), limit, plan, modality,
                              crosses_gap(info), info,
                              filtered=condition is not None)

    def _named_vectors(self, ids: Sequence[str], name: str) -> dict[str, np.ndarray]:
        records = self._call(lambda: self._client.retrieve(
            self.collection, ids=list(ids), with_payload=False, with_vectors=[name]))
        out = {}
        for record in records:
            vectors = record.vector if isinstance(record.vector, dict) else {}
            if name in vectors:
                out[str(record.id)] = np.asarray(vectors[name], dtype=np.float32)
        return out

    def _image_pages(self) -> Iterator[tuple[list[str], np.ndarray]]:
        offset = None
        while True:
            page = functools.partial(self._client.scroll, self.collection, limit=1000,
                                     offset=offset, with_payload=False,
                                     with_vectors=[IMAGE_VECTOR])
            records, offset = self._call(page)
            kept = [r for r in records
                    if isinstance(r.vector, dict) and IMAGE_VECTOR in r.vector]
            if kept:
                yield ([str(r.id) for r in kept],
                       np.asarray([r.vector[IMAGE_VECTOR] for r in kept], dtype=np.float32))
            if offset is None:
                return

    def _write_centred(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        from qdrant_client import models

        rounded = vectors.astype(np.float16).astype(np.float32)
        points = [models.PointVectors(id=i, vector={CENTRED_VECTOR: v.tolist()})
                  for i, v in zip(ids, rounded, strict=True)]
        self._call(lambda: self._client.update_vectors(self.collection, points=points,
                                                       wait=True))

    def _save_info(self, info: CollectionInfo) -> None:
        self._call(lambda: self._client.update_collection(
            self.collection, metadata={METADATA_KEY: asdict(info)}))
        self.info = info

    def get_payloads(self, ids: Sequence[str]) -> dict[str, ImagePayload]:
        records = self._call(lambda: self._client.retrieve(
            self.collection, ids=list(ids), with_payload=True, with_vectors=False))
        return {str(r.id): _payload(r.payload) for r in records}

    def iter_payloads(self) -> Iterator[tuple[str, ImagePayload]]:
        offset = None
        while True:
            page = functools.partial(self._client.scroll, self.collection, limit=1000,
                                     offset=offset, with_payload=True, with_vectors=False)
            records, offset = self._call(page)
            for record in records:
                yield str(record.id), _payload(record.payload)
            if offset is None:
                return

    def count(self) -> int:
        total = int(self._call(lambda: self._client.count(self.collection, exact=True)).count)
        self._count = (total, time.monotonic())
        return total

    def flush(self) -> None:
        """Writes are acknowledged durable (``wait=True``); nothing to flush."""

    def close(self) -> None:
        self._client.close()

    def _cached_count(self) -> int:
        cached = self._count
        if cached is None or time.monotonic() - cached[1] > COUNT_TTL_S:
            return self.count()
        return cached[0]

    def _call(self, request: Callable[[], T]) -> T:
        if self._serial is None:
            return _guard(self.where, request)
        with self._serial:
            return _guard(self.where, request)


def make_client(url: str, api_key: str | None = None) -> Any:
    """A QdrantClient for a server URL, ``:memory:`` or ``path:DIR`` (local mode)."""
    from qdrant_client import QdrantClient

    if url == ":memory:":
        return QdrantClient(location=":memory:")
    if url.startswith("path:"):
        try:
            return QdrantClient(path=url[len("path:"):], force_disable_check_same_thread=True)
        except RuntimeError as error:
            raise StoreBusyError(
                f"The local Qdrant folder {url[5:]} is open in another process; close it "
                f"and try again."
            ) from error
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
    return QdrantClient(url=url, api_key=key, timeout=TIMEOUT_S, check_compatibility=False)


def _create_collection(
    client: Any, collection: str, info: CollectionInfo, layout: ClusterLayout | None = None
) -> None:
    from qdrant_client import models

    tokens = models.VectorParams(
        size=info.token_width,
        distance=models.Distance.DOT,
        datatype=models.Datatype.FLOAT16,
        multivector_config=models.MultiVectorConfig(
            comparator=models.MultiVectorComparator.MAX_SIM),
        hnsw_config=models.HnswConfigDiff(m=0),
        on_disk=True,  # the server keeps cached reranker tokens on disk, not in RAM
    )
    vectors = {IMAGE_VECTOR: models.VectorParams(size=info.vector_size,
                                                 distance=models.Distance.COSINE),
               TOKENS_VECTOR: tokens}
    if info.centred:  # only a prefetch reads it: half precision, searched through int8
        vectors[CENTRED_VECTOR] = models.VectorParams(
            size=info.vector_size, distance=models.Distance.COSINE,
            datatype=models.Datatype.FLOAT16,
            hnsw_config=models.HnswConfigDiff(m=CENTRED_HNSW_M,
                                              ef_construct=CENTRED_EF_CONSTRUCT),
            quantization_config=models.ScalarQuantization(scalar=models.ScalarQuantizationConfig(
                type=models.ScalarType.INT8, quantile=0.99, always_ram=True)))
    client.create_collection(collection, vectors_config=vectors,
                             metadata={METADATA_KEY: asdict(info)},
                             **(layout or ClusterLayout()).create_args())
    _create_indexes(client, collection, INDEXED_FIELDS)


def _create_indexes(client: Any, collection: str, names: Iterable[str]) -> None:
    """The payload indexes of those ``INDEXED_FIELDS``; one that exists is kept."""
    from qdrant_client import models

    kinds = {  # no graph links per indexed value (PAYLOAD_GRAPH_LINKS): filtered queries scan
        "keyword": models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD,
                                             enable_hnsw=PAYLOAD_GRAPH_LINKS),
        "integer": models.IntegerIndexParams(type=models.IntegerIndexType.INTEGER, lookup=True,
                                             range=True, enable_hnsw=PAYLOAD_GRAPH_LINKS),
        "datetime": models.DatetimeIndexParams(type=models.DatetimeIndexType.DATETIME,
                                               enable_hnsw=PAYLOAD_GRAPH_LINKS)}
    with warnings.catch_warnings():  # local mode: "payload indexes have no effect"
        warnings.simplefilter("ignore", UserWarning)
        for name in names:
            client.create_payload_index(collection, name, kinds[INDEXED_FIELDS[name]], wait=True)


def client_filter(search_filter: SearchFilter | None, paired: bool = False) -> Any:
    """``SearchFilter`` as a qdrant-client filter (None for no filter), condition by kind;
    ``paired``: the collection's points carry ``folder_formats``."""
    from qdrant_client import models

    if search_filter is None or search_filter.is_empty():
        return None
    must: list[Any] = []
    for c in search_filter.conditions(paired):
        if c.kind == "match":
            must.append(models.FieldCondition(key=c.key, match=models.MatchValue(value=c.value)))
        elif c.kind == "match_any":
            must.append(models.FieldCondition(key=c.key, match=models.MatchAny(any=list(c.values))))
        elif c.kind == "time_range":
            must.append(models.FieldCondition(key=c.key, range=models.DatetimeRange(
                gte=c.gte, lt=c.lt)))
        else:
            must.append(models.FieldCondition(key=c.key, range=models.Range(gte=c.gte,
                                                                            lte=c.lte)))
    return models.Filter(must=must)


def _guard(where: str, request: Callable[[], T]) -> T:
    """Run one request; connection and auth failures become one clear ``StoreError``."""
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

    try:
        return request()
    except UnexpectedResponse as error:
        if error.status_code in (401, 403):
            raise StoreError(
                f"The Qdrant server at {_safe_url(where)} refused the API key "
                f"(HTTP {error.status_code}). Set {API_KEY_ENV} to a valid key."
            ) from None
        raise StoreError(
            f"The Qdrant server at {_safe_url(where)} answered HTTP {error.status_code}: "
            f"{_short(error.content)}"
        ) from None
    except (ResponseHandlingException, ConnectionError, TimeoutError, OSError) as error:
        raise StoreError(
            f"Could not reach the Qdrant server at {_safe_url(where)} ({_reason(error)}). "
            f"Check the URL and that the server is running."
        ) from None


def _reason(error: BaseException) -> str:
    inner = getattr(error, "source", None) or error.__cause__ or error
    return type(inner).__name__


def _short(content: bytes | str) -> str:
    text = content.decode(errors="replace") if isinstance(content, bytes) else str(content)
    return text[:200]


def _safe_url(url: str) -> str:
    """The URL without credentials, in case someone put a key in it."""
    from urllib.parse import urlsplit

    if "@" not in url:
        return url
    parts = urlsplit(url)
    return parts._replace(netloc=parts.hostname or "").geturl()


def _payload(payload: dict[str, Any] | None) -> ImagePayload:
    """A payload as the server returns it, typed as what twinrank stored."""
    return cast(ImagePayload, dict(payload or {}))

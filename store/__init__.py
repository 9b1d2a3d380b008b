"""The vector store: one Qdrant collection per (corpus, model), embedded or by URL.

``VectorStore`` (``search.schema``) is the seam every layer above talks to. Two back ends
implement it with one schema:

- ``EdgeStore`` (``search.edge``): Qdrant Edge in-process on a folder, the default;
- ``RemoteStore`` (``search.remote``): a Qdrant server, cluster or Cloud through
  qdrant-client, by URL and API key (qdrant-client's local mode in tests).

``open_store`` picks one, as qdrant-client's own ``QdrantClient`` picks local or remote;
nothing above it knows which it got.
"""

from __future__ import annotations

from pathlib import Path

from twinrank.store.edge import META_FILE, SHARD_DIR, EdgeStore, read_info
from twinrank.store.remote import (
    API_KEY_ENV,
    DEFAULT_COLLECTION,
    ClusterLayout,
    RemoteStore,
    is_remote_location,
)
from twinrank.store.schema import (
    EXACT_SEARCH_BELOW,
    SCHEMA_VERSION,
    CollectionInfo,
    CollectionMismatchError,
    PointRecord,
    StoreBusyError,
    StoredHit,
    StoreError,
    TextCalibration,
    VectorStore,
    calibration_due,
    check_info,
    planned_search,
    point_id_for,
    search_plan,
)

__all__ = [
    "API_KEY_ENV",
    "DEFAULT_COLLECTION",
    "EXACT_SEARCH_BELOW",
    "META_FILE",
    "SCHEMA_VERSION",
    "SHARD_DIR",
    "ClusterLayout",
    "CollectionInfo",
    "CollectionMismatchError",
    "EdgeStore",
    "PointRecord",
    "RemoteStore",
    "StoreBusyError",
    "StoreError",
    "StoredHit",
    "TextCalibration",
    "VectorStore",
    "calibration_due",
    "check_info",
    "open_store",
    "planned_search",
    "point_id_for",
    "read_info",
    "search_plan",
]


def open_store(
    location: str | Path,
    info: CollectionInfo | None = None,
    url: str | None = None,
    api_key: str | None = None,
    collection: str | None = None,
    layout: ClusterLayout | None = None,
) -> VectorStore:
    """Open (or, given ``info``, create) a collection; the location picks the back end.

    - a folder: embedded Qdrant Edge (the default);
    - ``url`` (or a location) ``http(s)://host:6333``: a Qdrant server or Qdrant Cloud;
      the API key is ``api_key`` or the ``TWINRANK_QDRANT_API_KEY`` environment variable;
    - ``":memory:"`` or ``"path:DIR"``: qdrant-client's local mode, a stand-in for tests.

    ``collection`` names the server collection (default ``"twinrank"``); a folder is one
    collection; ``layout`` spreads a new server collection (shards, replicas). Opening with
    another model's ``info`` raises ``CollectionMismatchError``.

    Example:
        >>> store = open_store("~/.twinrank/store")
        >>> store.count()
        6
        >>> cloud = open_store("", url="https://xyz.cloud.qdrant.io:6333",
        ...                    collection="photos")  # doctest: +SKIP
    """
    target = url or (str(location) if is_remote_location(location) else None)
    if target:
        return RemoteStore.open(target, info, collection=collection, api_key=api_key,
                                layout=layout)
    return EdgeStore.open(location, info)

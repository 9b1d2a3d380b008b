"""The identity a new collection records: which model built it, and what it stores.

Ingest creates collections, so it writes their identity; search reads it back
(``search.client.load_collection_model``) to load the same model.
"""

from __future__ import annotations

from pathlib import Path

from twinrank.models.encoder import Encoder
from twinrank.models.gap import mean_text_vector
from twinrank.store import CollectionInfo


def collection_info(
    model: Encoder, source: str | None = None, pretrained: str | None = None,
    cache_tokens: bool = True,
) -> CollectionInfo:
    """The identity a collection built with ``model`` records.

    ``source`` and ``pretrained`` say how to load the model again; they default to what
    the model itself records (the factory sets them). ``cache_tokens=False`` (ingest's
    ``--no-cache-tokens``) records ``token_count`` 0: no image tokens are stored (0 bytes
    per image) and a rerank reads its k images instead.

    >>> from twinrank.models import create_model
    >>> info = collection_info(create_model("twinrank-tiny"))
    >>> info.model_id, info.vector_size, (info.token_count, info.token_width)
    ('twinrank-tiny:random:0', 64, (16, 256))
    """
    source = str(source if source is not None else model.source)
    if Path(source).exists():
        source = str(Path(source).resolve())
    tokens, width = model.token_shape
    return CollectionInfo(
        model_id=model.model_id,
        vector_size=model.vector_size,
        token_count=tokens if cache_tokens else 0,
        token_width=width,
        model_source=source,
        model_pretrained=pretrained if pretrained is not None else model.pretrained,
        text_mean=tuple(mean_text_vector(model).tolist()),  # the store indexes `centred`
    )

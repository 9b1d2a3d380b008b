"""The one image reader (``models.images``), as the app and other callers above ``search``
see it: the UI reads thumbnails and uploads through this, with the same pixel and file-size
limits as ingest, so an image that was indexed can be shown."""

from __future__ import annotations

from twinrank.models.images import (
    MAX_FILE_BYTES,
    MAX_PIXELS,
    ImageReadError,
    open_image,
)

__all__ = ["MAX_FILE_BYTES", "MAX_PIXELS", "ImageReadError", "open_image"]

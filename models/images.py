"""Open an image file safely: orientation applied, RGB, size-guarded, metadata read.

Everything here is safe to run in worker threads: no global warning filters are touched,
and a file is read once (its bytes are hashed and decoded from memory).
"""

from __future__ import annotations

import io
import os
import stat
import struct
import warnings
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

MAX_PIXELS = 180_000_000  # above this an image is treated as a decompression bomb
EXIF_ORIENTATION = 0x0112
EXIF_DATETIME = 306
EXIF_IFD = 0x8769
EXIF_DATETIME_ORIGINAL = 36867
EXIF_OFFSET_TIME_ORIGINAL = 36881
HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")

# The pixel guard below is ours (and configurable); Pillow's warning would only be noise.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class DecodeError(ValueError):
    """The file is not an image twinrank can read; the message says why."""


@dataclass
class DecodedImage:
    image: Image.Image  # RGB, orientation applied
    width: int  # of the full image, after orientation (not of a draft-decoded copy)
    height: int
    format: str  # "jpeg", "png", ...
    captured_at: str | None  # RFC 3339 UTC, from EXIF when present


def read_file(path: Path) -> bytes:
    """The bytes of a regular file; ``DecodeError`` for empty, special or unreadable files.

    A FIFO or device named like an image would block a reader forever, so only regular
    files are opened.
    """
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise DecodeError("not a regular file")
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError as error:
        reason = "broken symbolic link" if os.path.islink(path) else "file disappeared"
        raise DecodeError(f"cannot read file: {reason}") from error
    except OSError as error:
        raise DecodeError(f"cannot read file: {error.strerror or error}") from error
    if not data:
        raise DecodeError("empty file")
    return data


def decode_image(
    path: Path | bytes, target_size: int | None = None, max_pixels: int = MAX_PIXELS
) -> DecodedImage:
    """Read an image (a path, or its bytes) into RGB; raise ``DecodeError`` with the reason.

    ``target_size`` lets JPEG decoding skip detail the model will not see (``draft``): the
    image is decoded at the smallest scale whose short side is still >= ``target_size``.

    Example:
        >>> decoded = decode_image(Path("photo.jpg"), target_size=224)  # doctest: +SKIP
        >>> decoded.image.mode, decoded.format
        ('RGB', 'jpeg')
    """
    data = read_file(path) if isinstance(path, Path) else path
    try:
        with Image.open(io.BytesIO(data)) as opened:
            fmt = (opened.format or "unknown").lower()
            width, height = opened.size
            if width * height > max_pixels:
                raise DecodeError(f"{width}x{height} pixels is over the {max_pixels} limit")
            if width == 0 or height == 0:
                raise DecodeError("image has no pixels")
            exif = _exif(opened)
            if target_size and fmt == "jpeg":
                opened.draft("RGB", _draft_size(width, height, target_size))
            image = _to_rgb(ImageOps.exif_transpose(opened))
            image.load()
    except DecodeError:
        raise
    except Image.DecompressionBombError as error:
        raise DecodeError(f"decompression bomb: {error}") from error
    except (OSError, SyntaxError, ValueError, TypeError, EOFError, IndexError,
            KeyError, MemoryError, struct.error) as error:
        raise DecodeError(f"cannot read image: {error}") from error
    if exif is not None and exif.get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
        width, height = height, width
    return DecodedImage(image, width, height, fmt, _capture_time(exif))


def _draft_size(width: int, height: int, target: int) -> tuple[int, int]:
    """The size to ask ``draft`` for so the short side stays >= ``target``."""
    short = max(1, min(width, height))
    return (max(1, -(-width * target // short)), max(1, -(-height * target // short)))


def _exif(image: Image.Image) -> Image.Exif | None:
    try:
        return image.getexif()
    except Exception:  # malformed EXIF must not cost the image
        return None


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    ):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode in HIGH_BIT_MODES:
        return Image.fromarray(_to_uint8(np.asarray(image))).convert("RGB")
    return image.convert("RGB")


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """16-bit / 32-bit / float grey levels scaled into 0..255 (Pillow would clip them)."""
    values = values.astype(np.float64)
    top = float(values.max()) if values.size else 0.0
    if values.dtype.kind == "f" and top <= 1.0:
        scaled = values * 255.0
    elif top > 255:
        scaled = values / (257.0 if top <= 65535 else top / 255.0)
    else:
        scaled = values
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _capture_time(exif: Image.Exif | None) -> str | None:
    """EXIF DateTimeOriginal (else DateTime) as RFC 3339 UTC.

    With an OffsetTimeOriginal the moment is converted to UTC; without one, the camera's
    wall-clock time is recorded as if it were UTC (EXIF has no zone).
    """
    if exif is None:
        return None
    try:
        sub = exif.get_ifd(EXIF_IFD)
        raw = sub.get(EXIF_DATETIME_ORIGINAL) or exif.get(EXIF_DATETIME)
        if not raw:
            return None
        moment = datetime.strptime(str(raw).strip("\x00 ")[:19], "%Y:%m:%d %H:%M:%S")
        offset = _offset(sub.get(EXIF_OFFSET_TIME_ORIGINAL))
        moment = moment.replace(tzinfo=timezone(offset)).astimezone(timezone.utc)
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    except (ValueError, TypeError, KeyError, OSError, OverflowError):
        return None


def _offset(raw: object) -> timedelta:
    text = str(raw or "").strip("\x00 ")
    if len(text) != 6 or text[0] not in "+-" or text[3] != ":":
        return timedelta(0)
    sign = -1 if text[0] == "-" else 1
    return sign * timedelta(hours=int(text[1:3]), minutes=int(text[4:6]))

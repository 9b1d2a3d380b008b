"""Open an image file safely: orientation applied, RGB, size-guarded, metadata read."""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from PIL import Image, ImageOps

MAX_PIXELS = 180_000_000  # above this an image is treated as a decompression bomb
EXIF_DATETIME_ORIGINAL = 36867
EXIF_IFD = 0x8769


class DecodeError(ValueError):
    """The file is not an image twinrank can read; the message says why."""


@dataclass
class DecodedImage:
    image: Image.Image  # RGB, orientation applied
    width: int
    height: int
    format: str  # "jpeg", "png", ...
    captured_at: str | None  # RFC 3339 UTC, from EXIF when present


def content_hash(path: Path) -> str:
    """sha256 of the file's bytes: the identity of an image, whatever its name."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def decode_image(path: Path, target_size: int | None = None) -> DecodedImage:
    """Read ``path`` into an RGB image; raise ``DecodeError`` with the reason otherwise.

    ``target_size`` lets JPEG decoding skip detail the model will not see (``draft``).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                fmt = (opened.format or path.suffix.lstrip(".")).lower()
                width, height = opened.size
                if width * height > MAX_PIXELS:
                    raise DecodeError(f"{width}x{height} pixels is over the {MAX_PIXELS} limit")
                captured_at = _capture_time(opened)
                if target_size and fmt == "jpeg":
                    opened.draft("RGB", (target_size, target_size))
                image = ImageOps.exif_transpose(opened)
                image = _to_rgb(image)
                image.load()
    except DecodeError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as error:
        raise DecodeError(f"cannot read image: {error}") from error
    if image.width == 0 or image.height == 0:
        raise DecodeError("image has no pixels")
    if _rotated(opened):
        width, height = height, width
    return DecodedImage(image, width, height, fmt, captured_at)


def _rotated(image: Image.Image) -> bool:
    try:
        return image.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    except Exception:
        return False


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        return image.point(lambda value: value / 256).convert("L").convert("RGB")
    return image.convert("RGB")


def _capture_time(image: Image.Image) -> str | None:
    try:
        exif = image.getexif()
        raw = exif.get_ifd(EXIF_IFD).get(EXIF_DATETIME_ORIGINAL) or exif.get(306)
        if not raw:
            return None
        moment = datetime.strptime(str(raw).strip("\x00 "), "%Y:%m:%d %H:%M:%S")
        return moment.replace(tzinfo=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (ValueError, TypeError, KeyError, OSError):
        return None

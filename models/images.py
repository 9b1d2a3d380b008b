"""The one image reader: every image twinrank opens (ingest, thumbnails, uploads, query
images, rerank, training, evaluation) goes through ``open_image`` / ``decode_image``.

One set of rules for all of them:

- only regular files are read: a FIFO, a device or a socket named like an image is refused
  before a byte is read (the file is opened non-blocking, then checked with ``fstat``), so
  nothing here can hang on one;
- a file over ``MAX_FILE_BYTES`` is refused from its size before it is read, and a file
  is never read past that size (it may grow while it is read);
- an image over ``MAX_PIXELS`` is refused from its header, before its pixels are decoded;
- the pixels are loaded *before* anything else (EXIF included) looks at the image, so a
  corrupt or truncated file is an error and never a half-black picture;
- the result is upright (EXIF orientation), RGB, transparency composited on white, and
  16-bit or float grey levels scaled (not clipped) into 0..255.

Errors are ``ImageReadError`` (a ``ValueError``) whose message names the file and the
reason; ``DecodeError``, which ingest reports per file, is one of them. Everything here is
safe in worker threads: no global warning filters are changed per call.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import warnings
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from hashlib import sha256
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image

from twinrank.display import printable as printable  # re-exported: names in messages

MAX_PIXELS = 180_000_000  # above this an image is treated as a decompression bomb
MAX_FILE_BYTES = 256 * 1024 * 1024  # above this a file is refused from its size alone
# A JPEG decoded with ``draft`` (libjpeg's DCT scaling) is not a full decode shrunk: on
# 12-megapixel photos a random ViT-B-32's image vector (224 px) moved by up to 6e-3 when
# drafted to just above its input and 4e-3 when drafted to twice it, against a full decode
# 3x slower than the latter (bench/decode_bench.py). Pillow's ``thumbnail`` keeps 2x too.
DRAFT_MARGIN = 2
CHUNK_BYTES = 1024 * 1024
EXIF_ORIENTATION = 0x0112
EXIF_DATETIME = 306
EXIF_IFD = 0x8769
EXIF_DATETIME_ORIGINAL = 36867
EXIF_OFFSET_TIME_ORIGINAL = 36881
HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Pillow's own errors a broken file can raise while it is opened or decoded.
PILLOW_ERRORS = (OSError, SyntaxError, ValueError, TypeError, EOFError, IndexError, KeyError,
                 struct.error, ZeroDivisionError, RuntimeError)

# The pixel guard is ours: one limit (``max_pixels``, checked from the header before
# decoding) for every reader. Pillow's own guard would refuse at a different size (2 x
# its MAX_IMAGE_PIXELS) with another message, and its warning would only be noise.
Image.MAX_IMAGE_PIXELS = None
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

Source = str | Path | bytes | IO[bytes]


class ImageReadError(ValueError):
    """An image could not be read; the message names the file and says why.

    ``reason`` is the why alone (ingest's report lists it next to the path).
    """

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message


class DecodeError(ImageReadError):
    """An image ingest cannot read (reported per file, never fatal)."""


@dataclass
class DecodedImage:
    image: Image.Image  # RGB, orientation applied
    width: int  # of the full image, after orientation (not of a draft-decoded copy)
    height: int
    format: str  # "jpeg", "png", ...
    captured_at: str | None  # RFC 3339 UTC, from EXIF when present


def open_image(
    source: Source, *, max_pixels: int = MAX_PIXELS, target_size: int | None = None,
    max_bytes: int = MAX_FILE_BYTES,
) -> Image.Image:
    """An upright RGB image from a path, bytes or a binary file object (an upload).

    ``target_size`` is the size the caller will shrink the short side to: JPEG decoding
    may then skip detail (``draft``), keeping the short side at least ``DRAFT_MARGIN``
    times ``target_size``. The pixels differ a little from a full decode (see
    ``DRAFT_MARGIN``); leave it None where they must equal a reference's. Raises
    ``ImageReadError`` naming the file and the reason; never hangs on a FIFO or a device.

    Example:
        >>> open_image("photos/2022/b3.jpg", target_size=256).mode
        'RGB'
    """
    return _decode(source, max_pixels, target_size, max_bytes, ImageReadError).image


def decode_image(
    source: Source, target_size: int | None = None, max_pixels: int = MAX_PIXELS,
    max_bytes: int = MAX_FILE_BYTES,
) -> DecodedImage:
    """``open_image`` plus what ingest records: full size, format, capture time.

    Raises ``DecodeError`` (an ``ImageReadError``) with the reason.

    Example:
        >>> decoded = decode_image(Path("photos/2022/b3.jpg"), target_size=224)
        >>> decoded.image.mode, decoded.format, (decoded.width, decoded.height)
        ('RGB', 'jpeg', (48, 40))
    """
    return _decode(source, max_pixels, target_size, max_bytes, DecodeError)


def read_file(path: str | Path, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file; ``DecodeError`` for empty, special, oversized or
    unreadable files. See ``read_hashed``."""
    return read_hashed(path, max_bytes)[0]


def read_hashed(path: str | Path, max_bytes: int = MAX_FILE_BYTES) -> tuple[bytes, str]:
    """A regular file's bytes and their SHA-256, hashed while it is read in chunks.

    The file is opened non-blocking and checked with ``fstat`` before any read, so a FIFO
    or device named like an image is refused at once; a file over ``max_bytes`` is refused
    from its size, and reading stops past ``max_bytes`` should it grow meanwhile.

    Example:
        >>> data, digest = read_hashed(Path("photos/2022/b3.jpg"))
        >>> len(data) == Path("photos/2022/b3.jpg").stat().st_size, len(digest)
        (True, 64)
    """
    name = display_name(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError as error:
        reason = "broken symbolic link" if os.path.islink(path) else "file does not exist"
        raise _fail(DecodeError, name, f"cannot read file: {reason}") from error
    except OSError as error:
        raise _fail(DecodeError, name, f"cannot read file: {_os_reason(error)}") from error
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _fail(DecodeError, name, f"not a regular file ({_kind(info.st_mode)})")
        if info.st_size > max_bytes:
            raise _fail(DecodeError, name, f"file of {_size(info.st_size)} is over the "
                                           f"{_size(max_bytes)} file size limit")
        digest = sha256()
        chunks: list[bytes] = []
        total = 0
        with os.fdopen(fd, "rb", closefd=True) as handle:
            fd = -1
            while chunk := handle.read(CHUNK_BYTES):
                total += len(chunk)
                if total > max_bytes:
                    raise _fail(DecodeError, name, f"file grew over the {_size(max_bytes)} "
                                                   f"file size limit while it was read")
                digest.update(chunk)
                chunks.append(chunk)
    except OSError as error:
        raise _fail(DecodeError, name, f"cannot read file: {_os_reason(error)}") from error
    finally:
        if fd >= 0:
            os.close(fd)
    if not total:
        raise _fail(DecodeError, name, "empty file")
    return b"".join(chunks), digest.hexdigest()


def display_name(source: object) -> str:
    """How a source is named in messages: its path, an upload's name, never an object repr."""
    if isinstance(source, (str, Path)):
        return printable(os.fsdecode(source))
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "the image data"
    name = getattr(source, "name", None)
    if isinstance(name, (str, Path)) and str(name):
        return printable(os.fsdecode(name))
    return "the uploaded image"


def _decode(
    source: Source, max_pixels: int, target_size: int | None, max_bytes: int,
    error_type: type[ImageReadError],
) -> DecodedImage:
    name = display_name(source)
    data = _source_bytes(source, name, max_bytes, error_type)
    try:
        with Image.open(io.BytesIO(data)) as opened:
            fmt = (opened.format or "unknown").lower()
            width, height = opened.size
            if width == 0 or height == 0:
                raise _fail(error_type, name, "image has no pixels")
            if width * height > max_pixels:
                raise _fail(error_type, name, f"{width}x{height} pixels is over the "
                                              f"{max_pixels} limit")
            if target_size and fmt == "jpeg":
                opened.draft("RGB", _draft_size(width, height, target_size))
            opened.load()  # first: a broken file fails here, never as zero-filled pixels
            exif = _exif(opened)
            image = _to_rgb(_upright(opened, exif))
    except ImageReadError:
        raise
    except Image.UnidentifiedImageError:
        raise _fail(error_type, name, "not an image file, or a format this installation "
                                      "cannot decode") from None
    except Image.DecompressionBombError as error:
        raise _fail(error_type, name, f"too many pixels (decompression bomb guard): "
                                      f"{error}") from None
    except MemoryError:
        raise _fail(error_type, name, "not enough memory to decode it") from None
    except PILLOW_ERRORS as error:
        raise _fail(error_type, name, f"damaged or truncated image data ({error})") from None
    orientation = exif.get(EXIF_ORIENTATION, 1) if exif is not None else 1
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return DecodedImage(image, width, height, fmt, _capture_time(exif))


def _source_bytes(
    source: Source, name: str, max_bytes: int, error_type: type[ImageReadError]
) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, Path)):
        try:
            return read_file(Path(source).expanduser(), max_bytes)
        except DecodeError as error:
            if error_type is DecodeError:
                raise
            raise _fail(error_type, name, error.reason) from None
    else:
        try:
            data = source.read(max_bytes + 1)
        except (OSError, ValueError) as error:
            raise _fail(error_type, name, f"cannot read it: {error}") from None
        if len(data) > max_bytes:
            raise _fail(error_type, name, f"over the {_size(max_bytes)} file size limit")
    if not data:
        raise _fail(error_type, name, "empty file")
    if len(data) > max_bytes:
        raise _fail(error_type, name, f"over the {_size(max_bytes)} file size limit")
    return data


def _fail(error_type: type[ImageReadError], name: str, reason: str) -> ImageReadError:
    return error_type(f"Cannot read image {name}: {reason}.", reason)


def _os_reason(error: OSError) -> str:
    return (error.strerror or str(error)).lower()


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "a special file"


def _size(n_bytes: int) -> str:
    if n_bytes >= 1024**3:
        return f"{n_bytes / 1024**3:.1f} GB"
    if n_bytes >= 1024**2:
        return f"{n_bytes / 1024**2:.0f} MB"
    return f"{n_bytes} bytes"


def _draft_size(width: int, height: int, target: int) -> tuple[int, int]:
    """The size to ask ``draft`` for so the short side stays >= ``DRAFT_MARGIN * target``."""
    short = max(1, min(width, height))
    keep = DRAFT_MARGIN * target
    return (max(1, -(-width * keep // short)), max(1, -(-height * keep // short)))


def _exif(image: Image.Image) -> Image.Exif | None:
    try:
        return image.getexif()
    except Exception:  # malformed EXIF must not cost the image
        return None


def _upright(image: Image.Image, exif: Image.Exif | None) -> Image.Image:
    """The image turned as its EXIF orientation says (malformed EXIF: as stored).

    Upright images are returned as they are, not copied (a copy of a 12-megapixel photo
    costs 30 ms): leaving ``with Image.open(...)`` closes the file, never the pixels.
    """
    try:
        method = TRANSPOSE.get(int(exif.get(EXIF_ORIENTATION, 1))) if exif is not None else None
    except (TypeError, ValueError):
        method = None
    return image.transpose(method) if method is not None else image


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

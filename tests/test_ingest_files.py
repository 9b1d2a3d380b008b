"""Ingest's walk and decode stages on generated files: formats, modes, EXIF, bad files."""

from __future__ import annotations

import importlib.util
import io
import os
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

from twinrank.ingest.pool import ReadAheadPool
from twinrank.ingest.walk import WalkOptions, image_suffixes, iter_image_files
from twinrank.models.images import DecodeError, decode_image, read_file


def _image(path: Path, size=(40, 20), color=(200, 30, 30), **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, **save)
    return path


def _names(root: Path, **options) -> list[str]:
    return [p.relative_to(root).as_posix() for p in iter_image_files(root,
                                                                     options=WalkOptions(**options))]


# --- walk -----------------------------------------------------------------------------

def test_walk_finds_extensions_in_any_case_and_skips_hidden_and_non_images(tmp_path):
    _image(tmp_path / "a.JPG")
    _image(tmp_path / "sub" / "b.Png")
    _image(tmp_path / "sub" / "c.jpeg")
    (tmp_path / "notes.txt").write_text("not an image")
    _image(tmp_path / ".hidden.jpg")
    _image(tmp_path / ".thumbs" / "d.jpg")
    assert _names(tmp_path) == ["a.JPG", "sub/b.Png", "sub/c.jpeg"]
    assert _names(tmp_path, include_hidden=True) == [
        ".hidden.jpg", ".thumbs/d.jpg", "a.JPG", "sub/b.Png", "sub/c.jpeg"]


def test_walk_follows_links_once_and_never_loops(tmp_path):
    root = tmp_path / "photos"
    _image(root / "2021" / "a.jpg")
    os.symlink(root, root / "2021" / "loop")  # a folder that contains itself
    os.symlink(root / "2021", root / "again")  # the same folder twice
    os.symlink(root / "2021" / "a.jpg", root / "link.jpg")
    os.symlink(root / "missing.jpg", root / "dangling.jpg")
    found = _names(root)
    assert found.count("2021/a.jpg") + found.count("again/a.jpg") == 1
    assert "link.jpg" in found and "dangling.jpg" in found  # the reader reports the dangling one
    assert len(found) == 3
    assert _names(root, follow_links=False) == ["2021/a.jpg"]


def test_include_and_exclude_globs(tmp_path):
    for name in ("2021/a.jpg", "2021/b.png", "2022/c.JPG", "2022/@eaDir/c.jpg",
                 "2022/x/thumbnails/t.jpg"):
        _image(tmp_path / name)
    assert _names(tmp_path, include=("*.jpg",)) == [
        "2021/a.jpg", "2022/@eaDir/c.jpg", "2022/c.JPG", "2022/x/thumbnails/t.jpg"]
    assert _names(tmp_path, exclude=("@eaDir", "**/thumbnails")) == [
        "2021/a.jpg", "2021/b.png", "2022/c.JPG"]
    assert _names(tmp_path, include=("2021/**",)) == ["2021/a.jpg", "2021/b.png"]
    assert _names(tmp_path, include=("*.jpg",), exclude=("2022/**",)) == ["2021/a.jpg"]


def test_optional_formats_only_when_their_plugin_is_installed():
    suffixes = image_suffixes()
    assert {".jpg", ".png", ".webp", ".gif", ".bmp", ".tif"} <= suffixes
    assert (".heic" in suffixes) == (importlib.util.find_spec("pillow_heif") is not None)
    has_avif = features.check("avif") or importlib.util.find_spec("pillow_avif") is not None
    assert (".avif" in suffixes) == bool(has_avif)


# --- decode ---------------------------------------------------------------------------

def test_exif_orientation_is_applied_and_reported_dimensions_follow_it(tmp_path):
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)  # left half red
    pixels[:, 20:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display": left goes to the top
    path = tmp_path / "r.jpg"
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    decoded = decode_image(path)
    assert decoded.image.size == (20, 40) and (decoded.width, decoded.height) == (20, 40)
    top, bottom = decoded.image.getpixel((10, 5)), decoded.image.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60


def test_every_mode_becomes_rgb(tmp_path):
    cases = {
        "cmyk.jpg": Image.new("CMYK", (8, 8), (0, 255, 255, 0)),  # red in CMYK
        "grey16.png": Image.fromarray(np.full((8, 8), 40000, np.uint16)),
        "palette.png": Image.new("P", (8, 8), 3),
        "alpha.png": Image.new("RGBA", (8, 8), (0, 0, 0, 0)),  # fully transparent
        "la.png": Image.new("LA", (8, 8), (10, 255)),
        "bits.bmp": Image.new("1", (8, 8), 1),
        "tiff.tif": Image.new("RGB", (8, 8), (1, 2, 3)),
        "webp.webp": Image.new("RGB", (8, 8), (9, 9, 9)),
    }
    for name, image in cases.items():
        image.save(tmp_path / name)
    frames = [Image.new("P", (8, 8), i) for i in (1, 2)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    results = {p.name: decode_image(p).image for p in tmp_path.iterdir()}
    assert all(image.mode == "RGB" and image.size == (8, 8) for image in results.values())
    assert results["cmyk.jpg"].getpixel((4, 4))[0] > 200
    grey = results["grey16.png"].getpixel((4, 4))[0]
    assert 140 < grey < 170  # 40000/65535 of full scale, not clipped to 255
    assert results["alpha.png"].getpixel((4, 4)) == (255, 255, 255)  # on white, not black


def test_capture_time_from_exif_with_and_without_an_offset(tmp_path):
    exif = Image.Exif()
    exif.get_ifd(0x8769)[36867] = "2019:07:04 18:30:00"
    exif.get_ifd(0x8769)[36881] = "+02:00"
    with_offset = _image(tmp_path / "a.jpg", exif=exif)
    plain = Image.Exif()
    plain.get_ifd(0x8769)[36867] = "2019:07:04 18:30:00"
    without = _image(tmp_path / "b.jpg", exif=plain)
    assert decode_image(with_offset).captured_at == "2019-07-04T16:30:00Z"
    assert decode_image(without).captured_at == "2019-07-04T18:30:00Z"
    assert decode_image(_image(tmp_path / "c.png")).captured_at is None


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_bomb_guard_refuses_before_decoding(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header_only(40_000, 40_000))  # 1.6 gigapixels, 50 bytes on disk
    with pytest.raises(DecodeError, match="pixels is over the|decompression bomb"):
        decode_image(bomb)
    small = _image(tmp_path / "s.png", size=(100, 100))
    with pytest.raises(DecodeError, match="over the 5000 limit"):
        decode_image(small, max_pixels=5000)


def test_bad_files_raise_a_reason_never_anything_else(tmp_path):
    good = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
        good, format="JPEG")
    files = {
        "empty.jpg": (b"", "empty file"),
        "truncated.jpg": (good.getvalue()[: len(good.getvalue()) // 2], "damaged or truncated"),
        "corrupt.png": (b"\x89PNG\r\n\x1a\n" + os.urandom(200), "damaged|not an image"),
        "text.jpg": (b"hello, I am a text file", "not an image file"),
    }
    for name, (data, reason) in files.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DecodeError, match=reason):
            decode_image(tmp_path / name)


def test_special_and_unreadable_files_are_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)  # opening this for reading would block forever
    with pytest.raises(DecodeError, match="not a regular file"):
        read_file(fifo)
    os.symlink(tmp_path / "nowhere.jpg", tmp_path / "dangling.jpg")
    with pytest.raises(DecodeError, match="broken symbolic link"):
        read_file(tmp_path / "dangling.jpg")
    # An unreadable file: test_hardening.py reads one in a process without root's power to
    # read anything, so the check also runs as root (as CI does); it was skipped here.


# --- the read-ahead pool --------------------------------------------------------------

def test_pool_keeps_order_and_gives_up_on_a_hung_item():
    release = threading.Event()

    def work(item: int) -> int:
        if item == 3:
            release.wait(30)  # hangs until the test ends
        if item == 5:
            raise ValueError("bad five")
        time.sleep(0.001 * (item % 3))
        return item * 10

    try:
        with ReadAheadPool(work, workers=2, timeout=0.5) as pool:
            results = list(pool.map(range(10), read_ahead=4))
        # closing waited for the live workers, not for the one stuck on item 3
        assert sum(thread.is_alive() for thread in pool._threads) == 1
    finally:
        release.set()
    assert [item for item, _ in results] == list(range(10))
    assert isinstance(results[3][1], TimeoutError)
    assert isinstance(results[5][1], ValueError)
    assert [r for i, r in results if i not in (3, 5)] == [0, 10, 20, 40, 60, 70, 80, 90]
    assert pool.timed_out == 1


def test_pool_workers_are_gone_when_it_closes():
    """A worker outliving the pool could drop the last reference to the model's tensors
    while Python shuts down, which makes torch abort a finished ingest (seen in CI)."""
    with ReadAheadPool(lambda item: item, workers=3) as pool:
        assert [r for _, r in pool.map(range(20), read_ahead=5)] == list(range(20))
    assert not any(thread.is_alive() for thread in pool._threads)


def test_a_paused_pool_starts_nothing_until_it_resumes():
    """Ingest pauses decoding while the model runs on a machine with too few cores."""
    started: list[int] = []

    def work(item: int) -> int:
        started.append(item)
        time.sleep(0.05)  # unpaused, two workers would start all 12 within 0.3 s
        return item

    with ReadAheadPool(work, workers=2) as pool:
        results = pool.map(range(12), read_ahead=12)
        assert next(results) == (0, 0)
        with pool.paused():
            time.sleep(0.1)  # the items already taken finish
            before = len(started)
            time.sleep(0.4)
            assert len(started) == before < 12  # nothing new began while paused
        assert [r for _, r in results] == list(range(1, 12))  # and everything after it

"""A folder of every kind of bad file we know, generated (no binaries committed), ingested
by the real command: every bad file is reported with its reason and nothing is indexed
from it; every good file is indexed exactly once; hostile names are shown escaped.

The ingest runs in a child process that, when the tests run as root (as CI does), has lost
root's power to read any file, so the unreadable file really is unreadable (see
``test_hardening.as_other_user``).
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_hardening import as_other_user, corrupt_png, png_header_only, stored_paths

SPARSE_BYTES = 2 * 1024**3  # 2 GB of nothing, named like a photo


@dataclass(frozen=True)
class Torture:
    root: Path
    bad: dict[str, str]  # name -> regex its skip reason must match
    good: list[str]  # names that must be indexed, each exactly once


def _encoded(fmt: str, seed: int, size: tuple[int, int] = (64, 48), **save) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **save)
    return buffer.getvalue()


def _gif(seed: int) -> bytes:
    frames = [Image.new("P", (32, 32), i + seed) for i in range(2)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    return buffer.getvalue()


def build_torture(root: Path) -> Torture:
    root.mkdir(parents=True)
    bad: dict[str, str] = {}
    good: list[str] = []

    def write(name: str, data: bytes, reason: str | None) -> None:
        (root / name).write_bytes(data)
        if reason is None:
            good.append(name)
        else:
            bad[name] = reason

    unreadable_image = "not an image file|damaged or truncated"
    png, jpeg = _encoded("PNG", 1), _encoded("JPEG", 2, quality=90)
    webp, gif = _encoded("WEBP", 3), _gif(4)
    # corrupt: a valid header, broken data
    corrupt_png(root / "corrupt.png")
    bad["corrupt.png"] = "damaged or truncated"
    write("corrupt.jpg", jpeg[:2] + b"\x00" * 40 + jpeg[42:], unreadable_image)
    # (damage inside JPEG's or WebP's entropy-coded data cannot be detected: those formats
    # carry no checksum, and their decoders return garbage pixels as any viewer shows them;
    # these files break what the decoder checks: markers and frame headers)
    write("corrupt.webp", webp[:20] + b"\x00" * 20 + webp[40:], unreadable_image)
    write("corrupt.gif", gif[:13] + b"\xff" * (len(gif) - 13), unreadable_image)
    # truncated in the header and in the data
    write("header-cut.png", png[:20], unreadable_image)
    write("header-cut.jpg", jpeg[:30], unreadable_image)
    write("data-cut.png", png[: len(png) // 2], "damaged or truncated")
    write("data-cut.jpg", jpeg[: len(jpeg) // 2], "damaged or truncated")
    write("data-cut.webp", webp[: len(webp) // 2], unreadable_image)
    write("text-named.jpg", b"just some text, not a picture\n", "not an image file")
    write("empty.png", b"", "empty file")
    write("huge.png", png_header_only(100_000, 100_000), r"100000x100000 pixels is over")
    with open(root / "sparse.jpg", "wb") as handle:
        handle.truncate(SPARSE_BYTES)
    bad["sparse.jpg"] = r"file of 2\.0 GB is over the 256 MB file size limit"
    os.mkfifo(root / "pipe.jpg")
    bad["pipe.jpg"] = r"not a regular file \(a FIFO\)"
    os.symlink("/dev/zero", root / "zero.jpg")
    bad["zero.jpg"] = r"not a regular file \(a device\)"
    write("locked.png", _encoded("PNG", 5), "permission denied")
    (root / "locked.png").chmod(0)
    os.symlink(root / "nowhere.png", root / "dangling.png")
    bad["dangling.png"] = "broken symbolic link"
    os.symlink("loop.png", root / "loop.png")  # a link to itself
    bad["loop.png"] = "too many levels of symbolic links"
    os.symlink(root, root / "folder-loop")  # a folder link back to the root: walked once
    latin1 = os.fsdecode(b"caf\xe9.png")
    write(latin1, _encoded("PNG", 6), "not valid UTF-8")

    # good files, some with names that are hostile to terminals and to markup
    write("plain.png", _encoded("PNG", 10), None)
    write("photo.jpg", _encoded("JPEG", 11), None)
    write("anim.gif", _gif(40), None)
    write("still.webp", _encoded("WEBP", 12), None)
    write("copy-of-plain.png", (root / "plain.png").read_bytes(), None)  # same content
    write("\x1b[31mred\x1b[0m\n  1    9.999  fake.png", _encoded("PNG", 13), None)
    write("<img src=x onerror=alert(1)>.png", _encoded("PNG", 14), None)
    write("`code` [link](javascript:alert(1)) ![i](x).png", _encoded("PNG", 15), None)
    write("Ferien 2021 – Strand é 日本.png", _encoded("PNG", 16), None)
    return Torture(root, bad, good)


def test_every_bad_file_is_reported_and_every_good_file_indexed_once(tmp_path):
    torture = build_torture(tmp_path / "torture")
    store, report_file = tmp_path / "store", tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "twinrank.cli", "ingest", str(torture.root), "--store", str(store),
         "--report", str(report_file), "--no-progress", "--decode-timeout", "60",
         "--model", "twinrank-tiny"],
        capture_output=True, text=True, timeout=600, **as_other_user())
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr
    report = json.loads(report_file.read_text())

    reasons = {Path(f["path"]).name: f["reason"] for f in report["failed"]}
    assert set(reasons) == set(torture.bad)
    for name, pattern in torture.bad.items():
        assert re.search(pattern, reasons[name]), (name, reasons[name])
        assert "BytesIO" not in reasons[name]

    indexed = [Path(p).name for paths in stored_paths(store) for p in paths]
    assert sorted(indexed) == sorted(torture.good)  # each good file once, no bad one
    assert report["added"] == len(torture.good) - 1  # copy-of-plain shares plain's point
    assert report["duplicates"] == 1

    shown = done.stdout + done.stderr
    assert "\x1b" not in shown  # the report's lines escape control characters
    assert "caf\\xe9.png" in shown


@pytest.mark.slow
def test_a_second_run_over_the_torture_folder_changes_nothing(tmp_path):
    torture = build_torture(tmp_path / "torture")
    store = tmp_path / "store"
    command = [sys.executable, "-m", "twinrank.cli", "ingest", str(torture.root), "--store",
               str(store), "--no-progress", "--model", "twinrank-tiny"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=600,
                           **as_other_user())
    second = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            **as_other_user())
    assert first.returncode == second.returncode == 0, second.stderr[-3000:]
    assert f"unchanged {len(torture.good)}" in second.stdout
    assert f"failed {len(torture.bad)}" in second.stdout

"""Issue 17, hardening: each bad input gets a sentence, never a traceback, a hang, a black
image in the index or a lost path. Every test here failed on the code before the fix (see
the issue's note); the UI's processes are in ``test_hardening_ui.py``, the folder of bad
files in ``test_torture.py``."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image
from PIL import Image
from typer.testing import CliRunner

import twinrank.models.images as images
from twinrank.cli import app
from twinrank.store import open_store


def ingest(root: Path, store: Path, *extra: str) -> tuple[int, str, dict]:
    """``twinrank ingest`` in this process: (exit code, output, the JSON report)."""
    report = store.parent / f"{store.name}-report.json"
    result = CliRunner().invoke(app, ["ingest", str(root), "--store", str(store),
                                      "--no-progress", "--report", str(report),
                                      "--model", "twinrank-tiny", *extra])
    data = json.loads(report.read_text()) if report.is_file() else {}
    return result.exit_code, result.output, data


def stored_paths(store: Path) -> list[list[str]]:
    opened = open_store(store)
    try:
        return sorted(sorted(p["paths"]) for _, p in opened.iter_payloads())
    finally:
        opened.close()


def corrupt_png(path: Path, seed: int = 0) -> Path:
    """A PNG whose header is fine and whose pixel data is half garbage: Pillow's lazy load
    fails, and code that touches the image before loading it got a zero-filled buffer."""
    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 255, (64, 64, 3), np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG")
    data = buffer.getvalue()
    path.write_bytes(data[: len(data) // 2] + bytes(len(data) - len(data) // 2))
    return path


def png_header_only(width: int, height: int) -> bytes:
    """A 60-byte PNG that claims ``width`` x ``height`` pixels: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A temporary folder another user can enter (pytest's own is private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="twinrank-test-"))
    folder.chmod(0o755)
    yield folder
    for place, folders, _ in os.walk(folder):  # a read-only store must be removable again
        for name in folders:
            os.chmod(os.path.join(place, name), 0o755)
    folder.chmod(0o755)
    shutil.rmtree(folder, ignore_errors=True)


def as_other_user() -> dict:
    """``subprocess`` arguments that make file permissions count when the tests run as
    root (as CI does): the child keeps uid 0 (it must still run the interpreter) but loses
    the capabilities that let root read and write any file (dropped from its bounding set,
    so its exec does not get them back)."""
    if os.geteuid() != 0:
        return {}
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def drop() -> None:
        for capability in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
            if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "cannot drop root's file capabilities")

    return {"preexec_fn": drop}


def make_read_only(folder: Path) -> None:
    for place, folders, files in os.walk(folder):
        for name in files:
            os.chmod(os.path.join(place, name), 0o444)
        for name in folders:
            os.chmod(os.path.join(place, name), 0o555)
    folder.chmod(0o555)


# --- 1. a corrupt PNG is an error, not a black image ----------------------------------

def test_corrupt_png_is_reported_and_never_indexed_as_black(tmp_path):
    root = tmp_path / "photos"
    make_image(root / "good.png", seed=1)
    corrupt_png(root / "corrupt.png")
    with pytest.raises(images.DecodeError, match="damaged or truncated"):
        images.decode_image(root / "corrupt.png")
    code, output, report = ingest(root, tmp_path / "store")
    assert code == 0, output
    assert report["added"] == 1
    assert [Path(f["path"]).name for f in report["failed"]] == ["corrupt.png"]
    assert stored_paths(tmp_path / "store") == [[(root / "good.png").as_posix()]]


# --- 4. paths are forgotten only by --prune, only under its folder --------------------

def test_a_path_on_an_unplugged_drive_survives_a_reingest_without_prune(tmp_path):
    a, b = tmp_path / "A", tmp_path / "B"
    make_image(a / "same.png", seed=5)
    (b).mkdir()
    shutil.copy2(a / "same.png", b / "same.png")
    store = tmp_path / "store"
    assert ingest(a, store)[0] == 0 and ingest(b, store)[0] == 0
    both = [[(a / "same.png").as_posix(), (b / "same.png").as_posix()]]
    assert stored_paths(store) == both
    b.rename(tmp_path / "B-unplugged")  # the drive holding B goes away
    os.utime(a / "same.png", ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    code, output, report = ingest(a, store)
    assert code == 0 and report["pruned"] == 0, output
    assert stored_paths(store) == both  # B's path is still known


def test_prune_forgets_only_paths_under_its_own_folder(tmp_path):
    a, b = tmp_path / "A", tmp_path / "B"
    make_image(a / "same.png", seed=6)
    make_image(a / "gone.png", seed=7)
    b.mkdir()
    shutil.copy2(a / "same.png", b / "same.png")
    store = tmp_path / "store"
    ingest(a, store)
    ingest(b, store)
    shutil.rmtree(b)
    (a / "gone.png").unlink()
    code, output, report = ingest(a, store, "--prune")
    assert code == 0 and report["pruned"] == 1, output  # gone.png, under A
    assert stored_paths(store) == [[(a / "same.png").as_posix(), (b / "same.png").as_posix()]]


# --- 5. whole files are never read without a cap ---------------------------------------

def test_a_file_over_the_size_cap_is_refused_from_its_size_unread(tmp_path):
    big = tmp_path / "big.jpg"
    with open(big, "wb") as handle:  # sparse: 3 MB long, no block written
        handle.truncate(3 * 1024 * 1024)
    with pytest.raises(images.DecodeError, match="over the 1 MB file size limit"):
        images.read_hashed(big, max_bytes=1024 * 1024)
    data, digest = images.read_hashed(make_image(tmp_path / "ok.png", seed=2))
    import hashlib
    assert digest == hashlib.sha256(data).hexdigest()
    root = tmp_path / "photos"
    root.mkdir()
    shutil.move(big, root / "big.jpg")
    make_image(root / "ok.png", seed=2)
    code, output, report = ingest(root, tmp_path / "store", "--max-file-mb", "1")
    assert code == 0, output
    assert report["added"] == 1
    assert [f["reason"] for f in report["failed"]] == [
        "file of 3 MB is over the 1 MB file size limit"]


# --- 6. one pixel limit, one reader ----------------------------------------------------

def test_every_reader_applies_the_same_pixel_limit(tmp_path):
    """Ingest, thumbnails/uploads, query images and rerank read through one function, so
    an image ingest indexed can be shown and one it refuses is refused everywhere."""
    from twinrank.models import images
    from twinrank.rerank.base import open_rgb
    from twinrank.ui import thumbs

    assert thumbs.open_image is images.open_image
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(20_000, 10_000))  # 200 MP, over the limit
    for read in (images.decode_image, images.open_image, thumbs.open_image, open_rgb):
        with pytest.raises(images.ImageReadError, match="bomb.png"):
            read(bomb)
    with open(bomb, "rb") as upload:  # an upload is a file object
        with pytest.raises(images.ImageReadError, match="over the"):
            images.open_image(upload)


# --- 7. tracebacks and hangs become sentences ------------------------------------------

def test_ingest_with_a_file_as_the_store_is_one_sentence(tmp_path):
    root = tmp_path / "photos"
    make_image(root / "a.png", seed=1)
    not_a_folder = tmp_path / "notes.txt"
    not_a_folder.write_text("hello")
    for args in (["ingest", str(root), "--store", str(not_a_folder), "--no-progress",
                  "--model", "twinrank-tiny"],
                 ["search", "a dog", "--store", str(not_a_folder)]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 1, result.output
        assert "is a file, not a store folder" in result.output
        assert "Traceback" not in result.output and result.exception.__class__ is SystemExit


def test_read_only_store_is_searchable_and_refuses_writes(tmp_path, shared_tmp):
    root = shared_tmp / "photos"
    for i in range(4):
        make_image(root / f"p{i}.png", seed=20 + i)
    store = shared_tmp / "store"
    assert ingest(root, store)[0] == 0
    make_read_only(store)
    before = set(os.listdir(store))
    command = [sys.executable, "-m", "twinrank.cli", "search", "a red block", "--store",
               str(store), "-k", "3", "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240,
                          cwd=shared_tmp, **as_other_user())
    assert done.returncode == 0, done.stderr[-2000:]
    hits = json.loads(done.stdout)
    assert len(hits) == 3 and all(Path(h["path"]).parent == root for h in hits)
    assert set(os.listdir(store)) == before  # nothing written, not even a lock
    make_image(root / "new.png", seed=29)  # something to add, so the ingest must write
    ingest_again = [sys.executable, "-m", "twinrank.cli", "ingest", str(root), "--store",
                    str(store), "--no-progress"]
    done = subprocess.run(ingest_again, capture_output=True, text=True, timeout=240,
                          cwd=shared_tmp, **as_other_user())
    assert done.returncode == 1 and "is read-only" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr


@pytest.mark.timeout(120)
def test_a_fifo_or_a_bomb_as_query_image_is_an_error_not_a_hang(tmp_path):
    from twinrank.search import SearchClient
    from twinrank.search.client import QueryError

    root = tmp_path / "photos"
    for i in range(3):
        make_image(root / f"p{i}.png", seed=30 + i)
    assert ingest(root, tmp_path / "store")[0] == 0
    fifo = tmp_path / "query.jpg"
    os.mkfifo(fifo)  # reading this would block until someone writes to it: forever
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(30_000, 30_000))
    with SearchClient(tmp_path / "store", reranker=None) as client:
        with pytest.raises(QueryError, match="not a regular file"):
            client.search(fifo)
        with pytest.raises(QueryError, match="pixels is over the|decompression bomb"):
            client.search(bomb)
    runner = CliRunner()
    for path, message in ((fifo, "not a regular file"), (bomb, "pixels is over the")):
        result = runner.invoke(app, ["rerank", "a dog", str(root / "p0.png"), str(path),
                                     "--model", "twinrank-tiny"])
        assert result.exit_code == 1, result.output
        assert message in result.output and "Traceback" not in result.output


def test_an_unreadable_file_is_reported_even_when_running_as_root(shared_tmp):
    """Root reads any file whatever its mode bits, so the read runs without that power."""
    locked = make_image(shared_tmp / "locked.png", seed=3)
    locked.chmod(0)
    code = ("from twinrank.models.images import read_hashed, DecodeError\n"
            "try:\n    read_hashed(" + repr(str(locked)) + ")\n"
            "except DecodeError as error:\n    print(error.reason)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=shared_tmp, **as_other_user())
    assert done.stdout.strip() == "cannot read file: permission denied", done.stderr[-2000:]


# --- 8. terminal output cannot be faked by a file name ---------------------------------

def test_search_output_escapes_control_characters_in_file_names(tmp_path):
    root = tmp_path / "photos"
    hostile = "red\x1b[2J\x1b[31m\n  1     9.999  /etc/passwd\x07.png"
    make_image(root / hostile, seed=40)
    make_image(root / "plain.png", seed=41)
    assert ingest(root, tmp_path / "store")[0] == 0
    result = CliRunner().invoke(app, ["search", "a red block", "--store",
                                      str(tmp_path / "store"), "--no-rerank"])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 3  # two hits and the timings: no line forged by the name
    assert any("red\\x1b[2J\\x1b[31m\\n" in line for line in lines)


def test_printable_keeps_ordinary_names_and_escapes_the_rest():
    assert images.printable("Ferien/Strand 2021 é 日本.jpg") == "Ferien/Strand 2021 é 日本.jpg"
    assert images.printable("a\tb\nc\x1b[0m\x9b") == "a\\tb\\nc\\x1b[0m\\x9b"
    assert images.printable(os.fsdecode(b"caf\xe9.jpg")) == "caf\\xe9.jpg"


# --- 9. smaller ------------------------------------------------------------------------

def test_ingest_of_an_empty_folder_says_so_and_creates_nothing(tmp_path):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("no pictures here")
    store = tmp_path / "store"
    code, output, _ = ingest(empty, store)
    assert code == 1 and "No image files under" in output, output
    assert not store.exists()


def test_errors_name_only_options_that_exist(tmp_path):
    """A store built with one model and ingested with another: the advice must be
    something the user can type (``search`` has no ``--model``)."""
    root = tmp_path / "photos"
    make_image(root / "a.png", seed=1)
    store = tmp_path / "store"
    assert ingest(root, store)[0] == 0
    info = json.loads((store / "twinrank.json").read_text())
    info["model_id"] = "some-other-model:v1"
    (store / "twinrank.json").write_text(json.dumps(info))
    make_image(root / "b.png", seed=2)  # a new file: the model must load, and is checked
    result = CliRunner().invoke(app, ["ingest", str(root), "--store", str(store),
                                      "--no-progress", "--model", "twinrank-tiny"])
    assert result.exit_code == 1
    assert "Search it with --model" not in result.output
    assert "--model" not in result.output or "ingest" in result.output


def test_the_gpu_mark_skips_without_cuda_instead_of_deselecting(tmp_path):
    """Run pytest as a user would (the project's pyproject and conftest) on one gpu test:
    without CUDA it is reported as skipped, not silently deselected; with CUDA it runs."""
    import torch

    project = Path(__file__).parents[1]
    (tmp_path / "tests").mkdir()
    shutil.copy(project / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copy(project / "tests" / "conftest.py", tmp_path / "tests" / "conftest.py")
    (tmp_path / "tests" / "test_probe.py").write_text(
        "import pytest\n\n\n@pytest.mark.gpu\ndef test_needs_cuda():\n"
        "    import torch\n    assert torch.cuda.is_available()\n")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-rs"], cwd=tmp_path, capture_output=True, text=True, timeout=240)
    expected = "1 passed" if torch.cuda.is_available() else "1 skipped"
    assert expected in done.stdout and "deselected" not in done.stdout, done.stdout[-2000:]


def test_mode_bits_of_a_read_only_copy_do_not_leak(tmp_path):
    """The private copy a read-only store is searched from must be writable by us."""
    from twinrank.store.lease import readable_copy

    (tmp_path / "s" / "shard" / "seg").mkdir(parents=True)
    (tmp_path / "s" / "shard" / "seg" / "data").write_bytes(b"x")
    make_read_only(tmp_path / "s")
    copy = readable_copy(tmp_path / "s")
    try:
        mode = (copy / "shard" / "seg" / "data").stat().st_mode
        assert mode & stat.S_IWUSR
    finally:
        shutil.rmtree(copy)
        for place, folders, _ in os.walk(tmp_path / "s"):
            for name in folders:
                os.chmod(os.path.join(place, name), 0o755)


def test_a_query_cut_to_the_models_context_gets_one_line(tmp_path):
    root = tmp_path / "photos"
    for i in range(3):
        make_image(root / f"p{i}.png", seed=50 + i)
    assert ingest(root, tmp_path / "store")[0] == 0
    long_query = " ".join(["a small red circle left of a large blue square"] * 12)
    runner = CliRunner()
    for query, lines in ((long_query, 1), ("a red circle", 0)):
        result = runner.invoke(app, ["search", query, "--store", str(tmp_path / "store"),
                                     "--no-rerank"])
        assert result.exit_code == 0, result.output
        assert result.output.count("The query is longer than the model reads") == lines
    import warnings

    from twinrank.search import SearchClient

    with SearchClient(tmp_path / "store", reranker=None) as client:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            client.search(long_query, k=2)
    assert any("longer than the model reads" in str(w.message) for w in caught)

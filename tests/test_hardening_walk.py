"""Issue 33, the walk: an unreadable folder is reported and ``--prune`` keeps what is stored
from it; links are followed but never into ``/proc``, ``/sys``, ``/dev`` or back up to a
folder that contains them; a store inside the folder is not indexed; a path longer than the
system allows is reported; deleted files are named without ``--prune``. The permission and
link cases run ``twinrank ingest`` as a real process, the rest through the CLI in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_image
from test_hardening import as_other_user, ingest, stored_paths
from test_hardening import shared_tmp as shared_tmp  # a fixture, used by name

from twinrank.search import SearchClient
from twinrank.ui.thumbs import THUMBS_DIR, ThumbnailCache


def ingest_process(root: Path, store: Path, *extra: str, timeout: float = 240,
                   **how: object) -> tuple[subprocess.CompletedProcess[str], dict]:
    """``twinrank ingest`` as a real process: the finished process and its JSON report."""
    report = store.parent / f"{store.name}-report.json"
    report.unlink(missing_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "twinrank.cli", "ingest", str(root), "--store", str(store),
         "--no-progress", "--report", str(report), "--model", "twinrank-tiny", *extra],
        capture_output=True, text=True, timeout=timeout, cwd=store.parent, **how)
    return done, json.loads(report.read_text()) if report.is_file() else {}


def reasons(report: dict, key: str = "skipped_folders") -> dict[str, str]:
    return {Path(item["path"]).name: item["reason"] for item in report[key]}


def test_an_unreadable_folder_is_reported_and_prune_keeps_its_images(shared_tmp):
    root = shared_tmp / "photos"
    for i in range(2):
        make_image(root / "locked" / f"l{i}.png", seed=i)
        make_image(root / "open" / f"o{i}.png", seed=10 + i)
    make_image(root / "open" / "private.png", seed=12)
    store = shared_tmp / "store"
    assert ingest(root, store)[0] == 0
    (root / "open" / "o1.png").unlink()  # really gone: --prune forgets this one alone
    make_image(root / "open" / "new.png", seed=13)
    for locked in (root / "locked", root / "open" / "private.png", root / "open" / "new.png"):
        locked.chmod(0)
    try:
        done, report = ingest_process(root, store, "--prune", **as_other_user())
    finally:
        (root / "locked").chmod(0o755)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "skipped folder" in done.stdout and "permission denied" in done.stdout
    assert reasons(report)["locked"].startswith("cannot read folder: permission denied")
    assert reasons(report, "failed") == {"new.png": "cannot read file: permission denied"}
    assert report["pruned"] == 1  # o1.png; nothing under locked/, nor the unreadable file
    kept = {Path(p).name for paths in stored_paths(store) for p in paths}
    assert kept == {"l0.png", "l1.png", "o0.png", "private.png"}


@pytest.mark.timeout(300)
def test_links_are_followed_but_never_into_pseudo_filesystems_or_back_up(tmp_path):
    root = tmp_path / "photos"
    make_image(root / "a.png", seed=20)
    make_image(tmp_path / "library" / "b.png", seed=21)
    os.symlink(tmp_path / "library", root / "library")  # a photo library's link: followed
    for name, target in (("proc", "/proc"), ("sys", "/sys"), ("dev", "/dev"), ("root", "/"),
                         ("up", str(tmp_path))):
        os.symlink(target, root / name)
    done, report = ingest_process(root, tmp_path / "store", timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert report["added"] == 2 and report["failed"] == []
    skipped = reasons(report)
    assert set(skipped) == {"proc", "sys", "dev", "root", "up"}, skipped
    for name in ("proc", "sys", "dev"):
        assert skipped[name].startswith("on a pseudo-filesystem"), skipped[name]
    for name in ("root", "up"):
        assert "a link to a folder that contains it (a loop)" in skipped[name]
    assert f"skipped folder {root / 'proc'}: on a pseudo-filesystem" in done.stdout
    paths = {p for group in stored_paths(tmp_path / "store") for p in group}
    assert paths == {(root / "a.png").as_posix(), (root / "library" / "b.png").as_posix()}


def test_a_store_inside_the_ingested_folder_is_not_indexed(tmp_path):
    root = tmp_path / "photos"
    for i in range(3):
        make_image(root / f"p{i}.png", seed=30 + i)
    store = root / "store"
    assert ingest(root, store)[0] == 0
    thumbs = ThumbnailCache(store / THUMBS_DIR)  # the app writes thumbnails into the store
    with SearchClient(store) as client:
        hits = client.search("a red block", k=3, rerank=False)
    assert all(thumbs.get(hit.id, hit.payload) is not None for hit in hits)
    assert len(list((store / THUMBS_DIR).rglob("*.jpg"))) == 3
    code, output, report = ingest(root, store)
    assert code == 0, output
    assert report["added"] == 0 and report["unchanged"] == 3
    assert reasons(report) == {"store": "a twinrank store: its own files (thumbnails) are "
                                        "not indexed"}
    assert len(stored_paths(store)) == 3


def deep_folder(base: Path, depth: int, name_length: int = 240) -> Path:
    """A folder ``depth`` levels of ``name_length``-character names below ``base``, made
    level by level from open folders, as a program that works in relative paths can."""
    name = "d" * name_length
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir(name, dir_fd=fd)
            inner = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
    finally:
        os.close(fd)
    return base.joinpath(*[name] * depth)


def write_at(path: Path, data: bytes) -> None:
    """Write a file whose full path may be longer than the system allows."""
    fd = os.open(path.parent.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        folder = os.open(path.parent.name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
    finally:
        os.close(fd)
    try:
        out = os.open(path.name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=folder)
        os.write(out, data)
        os.close(out)
    finally:
        os.close(folder)


def test_paths_longer_than_the_system_allows_are_reported(tmp_path):
    root = tmp_path / "photos"
    image = make_image(root / "short.png", seed=40).read_bytes()
    limit = os.pathconf(root, "PC_PATH_MAX")
    depth = (limit - 1 - len(os.fsencode(root))) // 241  # the deepest folder still listable
    folder = deep_folder(root, depth)
    assert len(os.fsencode(folder)) < limit
    long_file = folder / ("f" * (limit - len(os.fsencode(folder)) + 10) + ".png")
    write_at(long_file, make_image(tmp_path / "other.png", seed=41).read_bytes())
    too_deep = deep_folder(folder, 1) / "x.png"
    write_at(too_deep, image + b"\0")
    assert len(os.fsencode(too_deep.parent)) > limit and len(os.fsencode(long_file)) > limit
    code, output, report = ingest(root, tmp_path / "store")
    assert code == 0, output
    assert report["added"] == 1  # short.png: the other two cannot even be opened by path
    assert [f["path"] for f in report["skipped_folders"]] == [too_deep.parent.as_posix()]
    assert "longer than this system allows" in report["skipped_folders"][0]["reason"]
    assert [f["path"] for f in report["failed"]] == [long_file.as_posix()]
    assert "longer than this system allows" in report["failed"][0]["reason"]


def test_deleted_files_are_named_without_prune_and_forgotten_with_it(tmp_path):
    root = tmp_path / "photos"
    for i in range(3):
        make_image(root / f"p{i}.png", seed=50 + i)
    store = tmp_path / "store"
    assert ingest(root, store)[0] == 0
    (root / "p1.png").unlink()
    code, output, report = ingest(root, store)
    assert code == 0 and report["gone"] == 1 and report["pruned"] == 0, output
    assert (f"1 stored file under {root} is gone from disk but still searchable; run "
            f"again with --prune to forget it.") in output
    assert len(stored_paths(store)) == 3
    code, output, report = ingest(root, store, "--prune")
    assert code == 0 and report["pruned"] == 1 and report["gone"] == 0, output
    assert "gone from disk" not in output and len(stored_paths(store)) == 2


def test_a_backslash_in_a_folder_name_is_part_of_the_name(tmp_path: Path) -> None:
    """Linux allows a backslash in a name: ``--folder`` and the folder labels keep it whole
    instead of splitting there (which put those photos under a folder that does not exist)."""
    from twinrank.store.filters import ancestor_folders, folder_key

    assert ancestor_folders("/photos/a\\b/x.jpg") == ["/", "/photos", "/photos/a\\b"]
    assert folder_key("/photos/a\\b/") == "/photos/a\\b"
    assert "/photos/a" not in ancestor_folders("/photos/a\\b/x.jpg")

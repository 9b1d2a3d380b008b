"""The ingest runner with the tiny model: incremental runs, moves, duplicates, prune, bad
files, hangs, overlap of decode with the model, precision."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import torch
from conftest import make_image
from typer.testing import CliRunner

import twinrank.ingest.runner as runner_module
from twinrank.cli import app
from twinrank.ingest import IngestConfig, run_ingest
from twinrank.ingest.collection import collection_info
from twinrank.models.encode import ImageEmbedder, choose_dtype
from twinrank.store import open_store


def _run(model, root: Path, store_path: Path, embedder=None, **options):
    store = open_store(store_path, collection_info(model, "twinrank-tiny"))
    config = IngestConfig(root=root, batch_size=4, progress=False, **options)
    try:
        report = run_ingest(config, embedder or ImageEmbedder(model), store)
        payloads = dict(store.iter_payloads())
    finally:
        store.close()
    return report, payloads


def _counts(report) -> tuple[int, ...]:
    return (report.added, report.updated, report.unchanged, report.moved, report.duplicates,
            report.pruned, len(report.failed))


def _paths(payloads) -> list[list[str]]:
    return sorted(sorted(p["paths"]) for p in payloads.values())


def test_second_run_opens_nothing_and_touch_refreshes_without_embedding(
        tiny_model, image_folder, tmp_path):
    store = tmp_path / "store"
    first, _ = _run(tiny_model, image_folder, store)
    assert _counts(first) == (10, 0, 0, 0, 0, 0, 1) and first.embedded == 10
    second, _ = _run(tiny_model, image_folder, store)
    assert _counts(second) == (0, 0, 10, 0, 0, 0, 1) and second.embedded == 0
    touched = image_folder / "2021" / "a0.png"
    os.utime(touched, ns=(1_600_000_000_000_000_123, 1_600_000_000_000_000_123))
    third, payloads = _run(tiny_model, image_folder, store)
    assert _counts(third) == (0, 0, 10, 0, 0, 0, 1) and third.embedded == 0
    facts = [p["files"][touched.as_posix()] for p in payloads.values()
             if touched.as_posix() in p["files"]]
    assert facts == [{"size": touched.stat().st_size, "mtime_ns": 1_600_000_000_000_000_123}]


def test_a_run_that_only_rewrote_payloads_has_the_index_rebuilt(tiny_model, image_folder,
                                                                tmp_path, monkeypatch):
    """Qdrant moves each point whose payload is rewritten out of its search index (HNSW
    became a scan: ``bench/results/payload_rewrite.json``). A run that reads files (a
    touched one, say) builds the index anyway; one that only prunes (a copy deleted, so a
    point loses a path) has it rebuilt too, and a run that rewrote nothing does not."""
    store_path = tmp_path / "store"
    first, _ = _run(tiny_model, image_folder, store_path)
    for failure in first.failed:  # a broken file is read again by every run: not here
        os.remove(failure["path"])
    copy = image_folder / "copy.png"
    shutil.copy(image_folder / "2021" / "a0.png", copy)
    _run(tiny_model, image_folder, store_path)
    calls: list[int] = []
    monkeypatch.setattr(runner_module, "build_index",
                        lambda store, report, progress=False: calls.append(store.count()))
    factory = lambda: ImageEmbedder(tiny_model)  # noqa: E731 - as the CLI: loaded if needed
    untouched, _ = _run(tiny_model, image_folder, store_path, embedder=factory)
    assert untouched.payloads_rewritten == 0 and calls == []
    copy.unlink()
    pruned, payloads = _run(tiny_model, image_folder, store_path, embedder=factory, prune=True)
    assert pruned.pruned == 1 and pruned.payloads_rewritten == 1 and pruned.embedded == 0
    assert calls == [10] and copy.as_posix() not in str(payloads)


def _make_older(store_path: Path) -> None:
    """Strip what an older twinrank did not write: the points' ``folder_formats``, their
    index and the identity's flag (the embedded store, as ingest made it)."""
    from bench.filter_bench import make_older

    with open_store(store_path) as store:
        make_older(store)


def _upgrade_notes(report) -> list[str]:
    return [n for n in report.notes if "older twinrank" in n]


def test_a_rerun_upgrades_a_small_collection_an_older_twinrank_made(tiny_model, image_folder,
                                                                     tmp_path):
    """Under EXACT_SEARCH_BELOW images (no search index to lose), the next ingest, even
    one that embeds nothing, gives the points their ``folder_formats`` and says so."""
    from twinrank.store.filters import indexed_payload

    store_path = tmp_path / "store"
    _run(tiny_model, image_folder, store_path)
    _make_older(store_path)
    report, payloads = _run(tiny_model, image_folder, store_path)
    assert report.embedded == 0 and report.unchanged == 10
    assert _upgrade_notes(report) == [
        "Upgraded the collection: 10 images made by an older twinrank now carry their "
        "folder-and-type pairs, so a search by folder and --type is one match."]
    assert all(p["folder_formats"] == indexed_payload(p)["folder_formats"]
               for p in payloads.values())
    with open_store(store_path) as store:
        assert store.info.folder_formats
    again, _ = _run(tiny_model, image_folder, store_path)
    assert not _upgrade_notes(again)


def test_a_large_older_collection_is_left_to_twinrank_upgrade(tiny_model, image_folder,
                                                              tmp_path, monkeypatch):
    """From EXACT_SEARCH_BELOW images up the upgrade rebuilds the search index, so ingest
    only says how to run it; ``twinrank upgrade`` pairs the points, then builds the index
    (here from 5 images up), and a second run finds nothing to do."""
    from twinrank.store import schema

    store_path = tmp_path / "store"
    _run(tiny_model, image_folder, store_path)
    _make_older(store_path)
    monkeypatch.setattr(schema, "EXACT_SEARCH_BELOW", 5)
    report, payloads = _run(tiny_model, image_folder, store_path)
    assert [n.split(":")[0] for n in _upgrade_notes(report)] == [
        "This collection was made by an older twinrank"]
    assert "`twinrank upgrade`" in _upgrade_notes(report)[0]
    assert not any("folder_formats" in p for p in payloads.values())
    built = []
    real_build = runner_module.build_index
    monkeypatch.setattr(runner_module, "build_index",
                        lambda store, report, progress=False: built.append(store.count())
                        or real_build(store, report, progress))
    result = CliRunner().invoke(app, ["upgrade", "--store", str(store_path), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Upgraded the collection in ")
    assert "10 images now carry their folder-and-type pairs" in result.output
    assert "search index rebuilt in" in result.output and built == [10]
    with open_store(store_path) as store:
        assert store.info.folder_formats
        assert all(p["folder_formats"] for _, p in store.iter_payloads())
    again = CliRunner().invoke(app, ["upgrade", "--store", str(store_path)])
    assert again.exit_code == 0 and again.output == "The collection is up to date (10 images).\n"


def test_changed_file_is_reembedded_and_its_old_point_goes(tiny_model, image_folder, tmp_path):
    store = tmp_path / "store"
    _, before = _run(tiny_model, image_folder, store)
    target = image_folder / "2021" / "a1.png"
    make_image(target, seed=99)
    report, after = _run(tiny_model, image_folder, store)
    assert _counts(report) == (0, 1, 9, 0, 0, 0, 1) and report.embedded == 1
    assert len(after) == 10
    old = [pid for pid, p in before.items() if target.as_posix() in p["paths"]]
    assert old and old[0] not in after


def test_moved_file_is_recognised_by_content_not_reembedded(tiny_model, image_folder, tmp_path):
    store = tmp_path / "store"
    _, before = _run(tiny_model, image_folder, store)
    old = image_folder / "2021" / "a2.png"
    new = image_folder / "2023" / "renamed.png"
    new.parent.mkdir()
    old.rename(new)
    report, after = _run(tiny_model, image_folder, store)
    assert _counts(report) == (0, 0, 9, 1, 0, 0, 1) and report.embedded == 0
    assert set(after) == set(before)
    moved = [p for p in after.values() if new.as_posix() in p["paths"]]
    assert moved[0]["paths"] == [new.as_posix()] and old.as_posix() not in moved[0]["files"]
    assert "2023" in " ".join(moved[0]["folders"])


def test_identical_files_are_one_point_with_every_path(tiny_model, image_folder, tmp_path):
    source = image_folder / "2021" / "a3.png"
    for name in ("copy1.png", "deep/copy2.PNG"):
        (image_folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, image_folder / name)
    first, payloads = _run(tiny_model, image_folder, tmp_path / "store")
    assert (first.added, first.duplicates, first.embedded) == (10, 2, 10)
    assert len(payloads) == 10
    shutil.copy(source, image_folder / "later.png")  # a copy made after the first run
    second, payloads = _run(tiny_model, image_folder, tmp_path / "store")
    assert (second.added, second.duplicates, second.embedded) == (0, 1, 0)
    group = [p for p in _paths(payloads) if len(p) > 1]
    assert len(group) == 1 and len(group[0]) == 4
    assert {Path(p).name for p in group[0]} == {"a3.png", "copy1.png", "copy2.PNG", "later.png"}


def test_prune_forgets_gone_files_only_when_asked(tiny_model, image_folder, tmp_path):
    store = tmp_path / "store"
    shutil.copy(image_folder / "2021" / "a4.png", image_folder / "twin.png")
    _run(tiny_model, image_folder, store)
    (image_folder / "2021" / "a5.png").unlink()
    (image_folder / "twin.png").unlink()  # one of two paths of the same image
    kept, payloads = _run(tiny_model, image_folder, store)
    assert kept.pruned == 0 and len(payloads) == 10
    report, payloads = _run(tiny_model, image_folder, store, prune=True)
    assert report.pruned == 2 and len(payloads) == 9
    assert not any("twin.png" in p or "a5.png" in p for ps in _paths(payloads) for p in ps)
    assert any(ps == [(image_folder / "2021" / "a4.png").as_posix()] for ps in _paths(payloads))


def test_prune_refuses_when_the_folder_looks_unmounted(tiny_model, image_folder, tmp_path):
    store = tmp_path / "store"
    _run(tiny_model, image_folder, store)
    for path in list(image_folder.rglob("*")):
        if path.is_file():
            path.unlink()
    report, payloads = _run(tiny_model, image_folder, store, prune=True)
    assert report.pruned == 0 and len(payloads) == 10
    assert "Is the drive mounted" in report.notes[0]


def test_a_hung_decode_is_skipped_and_the_run_finishes(tiny_model, image_folder, tmp_path,
                                                       monkeypatch):
    release = threading.Event()
    real_decode = runner_module.decode_image
    hung = (image_folder / "2021" / "a1.png").read_bytes()

    def decode(data, *args, **kwargs):
        if data == hung:
            release.wait(60)
        return real_decode(data, *args, **kwargs)

    monkeypatch.setattr(runner_module, "decode_image", decode)
    try:
        report, payloads = _run(tiny_model, image_folder, tmp_path / "store", decode_timeout=0.5)
    finally:
        release.set()
    assert report.added == 9 and len(payloads) == 9
    reasons = {Path(f["path"]).name: f["reason"] for f in report.failed}
    assert "took too long" in reasons["a1.png"]
    assert "damaged or truncated" in reasons["broken.jpg"]


def test_decoding_runs_ahead_while_the_model_works(tiny_model, image_folder, tmp_path,
                                                   monkeypatch):
    """While batch 1 is in the model, the workers are already decoding batch 2."""
    started: list[int] = []
    next_batch_started = threading.Event()
    real_decode = runner_module.decode_image

    def decode(data, *args, **kwargs):
        started.append(1)
        if len(started) > 4:
            next_batch_started.set()
        return real_decode(data, *args, **kwargs)

    class WaitingEmbedder(ImageEmbedder):
        overlapped: list[bool] = []

        def embed_arrays(self, arrays):
            if not self.overlapped:
                self.overlapped.append(next_batch_started.wait(20))
            return super().embed_arrays(arrays)

    monkeypatch.setattr(runner_module, "decode_image", decode)
    embedder = WaitingEmbedder(tiny_model)
    report, _ = _run(tiny_model, image_folder, tmp_path / "store", embedder=embedder,
                     workers=1, read_ahead=8)
    assert embedder.overlapped == [True] and report.added == 10


def test_worker_preprocessing_equals_the_models_transform(tiny_model, image_folder):
    embedder = ImageEmbedder(tiny_model)
    from PIL import Image
    images = [Image.open(p).convert("RGB") for p in sorted(image_folder.rglob("*.png"))]
    assert torch.equal(embedder.pixels(images), tiny_model.preprocess_images(images))


def test_bf16_runs_a_copy_and_stays_close_to_fp32(tiny_model, image_folder):
    assert choose_dtype(tiny_model, "auto") == torch.float32  # tiny towers stay exact
    from PIL import Image
    images = [Image.open(p).convert("RGB") for p in sorted(image_folder.rglob("*.png"))]
    exact, _ = ImageEmbedder(tiny_model, "fp32").embed(images)
    half, tokens = ImageEmbedder(tiny_model, "bf16").embed(images)
    assert next(tiny_model.parameters()).dtype == torch.float32  # the caller's model untouched
    cosine = (exact * half).sum(1) / np.linalg.norm(exact, axis=1) / np.linalg.norm(half, axis=1)
    assert cosine.min() > 0.99 and tokens.dtype == np.float16


def test_cli_report_lists_every_skipped_file_as_json(image_folder, tmp_path):
    (image_folder / "empty.JPG").write_bytes(b"")
    (image_folder / "notes.png").write_text("not a picture")
    report_file = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["ingest", str(image_folder), "--store",
                                      str(tmp_path / "store"), "--report", str(report_file),
                                      "--no-progress", "--exclude", "2022/beach",
                                      "--model", "twinrank-tiny"])
    assert result.exit_code == 0, result.output
    data = json.loads(report_file.read_text())
    assert data["added"] == 6 and data["embedded"] == 6
    reasons = {Path(f["path"]).name: f["reason"] for f in data["failed"]}
    assert set(reasons) == {"broken.jpg", "empty.JPG", "notes.png"}
    assert reasons["empty.JPG"] == "empty file"
    assert reasons["notes.png"].startswith("not an image file") and "BytesIO" not in str(data)
    assert "failed 3" in result.output and "skipped" in result.output


def test_ingest_help_explains_every_option():
    from typer.main import get_command

    command = get_command(app).commands["ingest"]  # type: ignore[attr-defined]
    for param in command.params:
        assert getattr(param, "help", None) or param.param_type_name == "argument", param.name
    result = CliRunner().invoke(app, ["ingest", "--help"])
    for option in ("--workers", "--batch-size", "--prune", "--include", "--exclude",
                   "--decode-timeout", "--report", "--precision", "--device", "--threads"):
        assert option in result.output

"""The Ray engine on a real local Ray (2 CPUs) with the tiny model: the same points as the
in-process ingest, incremental re-runs, an actor killed mid-run, a list of paths as source.

One Ray per module (start-up costs seconds); each run still starts its own actors.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image
from typer.testing import CliRunner

from twinrank.cli import app
from twinrank.ingest import IngestConfig, run_ingest
from twinrank.ingest.collection import collection_info
from twinrank.models.encode import ImageEmbedder
from twinrank.store import ClusterLayout, open_store, point_id_for
from twinrank.store.remote import _create_collection
from twinrank.store.schema import file_content_hash

ray = pytest.importorskip("ray", reason="the Ray engine needs `pip install twinrank[ray]`")

from twinrank.ingest.ray_engine import RayOptions, run_ray_ingest  # noqa: E402
from twinrank.ingest.ray_stages import EmbedActor, ModelSpec  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _spec(model) -> ModelSpec:
    info = collection_info(model, "twinrank-tiny")
    return ModelSpec("twinrank-tiny", None, model.model_id, info.vector_size,
                     (info.token_count, info.token_width), device="cpu")


def _ray_run(model, root: Path, store_path: Path, **kwargs):
    store = open_store(store_path, collection_info(model, "twinrank-tiny"))
    config = IngestConfig(root=root, batch_size=4, progress=False)
    try:
        report = run_ray_ingest(config, _spec(model), ImageEmbedder(model), store,
                                RayOptions(files_per_task=4), **kwargs)
        points = _points(store)
    finally:
        store.close()
    return report, points


def _points(store) -> dict[str, tuple[dict, np.ndarray, np.ndarray]]:
    payloads = dict(store.iter_payloads())
    vectors, tokens = store.get_vectors(list(payloads)), store.get_tokens(list(payloads))
    return {pid: (p, vectors[pid], tokens[pid]) for pid, p in payloads.items()}


def _counts(report) -> tuple[int, ...]:
    return (report.added, report.updated, report.unchanged, report.moved, report.duplicates,
            report.pruned, len(report.failed))


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """12 images in sub-folders, one copied under a second name, one corrupt file."""
    root = tmp_path / "photos"
    for i in range(12):
        make_image(root / f"{2020 + i % 3}" / f"p{i}.png", seed=i)
    shutil.copy(root / "2020" / "p0.png", root / "copy-of-p0.png")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    return root


def test_ray_ingest_gives_the_in_process_points_and_reruns_embed_nothing(
        local_ray, tiny_model, photos, tmp_path):
    local_store = open_store(tmp_path / "local", collection_info(tiny_model, "twinrank-tiny"))
    config = IngestConfig(root=photos, batch_size=4, progress=False)
    try:
        expected_report = run_ingest(config, ImageEmbedder(tiny_model), local_store)
        expected = _points(local_store)
    finally:
        local_store.close()

    workers: dict[str, set[int]] = {"read": set(), "actor": set()}

    def watch(batch) -> None:
        workers["read"].update(int(pid) for pid in batch["read_pid"])
        workers["actor"].update(int(pid) for pid in batch["actor_pid"])

    report, points = _ray_run(tiny_model, photos, tmp_path / "ray", on_batch=watch)

    # Decoding ran in CPU tasks of their own, not fused into the model's actor.
    assert workers["read"] and not workers["read"] & workers["actor"]
    assert _counts(report) == _counts(expected_report) == (12, 0, 0, 0, 1, 0, 1)
    assert report.embedded == 12 and report.failed[0]["path"].endswith("broken.jpg")
    assert set(points) == set(expected)
    for pid, (payload, vector, tokens) in points.items():
        want_payload, want_vector, want_tokens = expected[pid]
        assert {k: v for k, v in payload.items() if k != "ingested_at"} == {
            k: v for k, v in want_payload.items() if k != "ingested_at"}
        np.testing.assert_allclose(vector, want_vector, atol=1e-5)
        np.testing.assert_allclose(tokens, want_tokens, atol=1e-3)

    # Incremental: one file moved, nothing else touched -> nothing embedded.
    (photos / "2021" / "p1.png").rename(photos / "moved-p1.png")
    again, after = _ray_run(tiny_model, photos, tmp_path / "ray")
    assert _counts(again) == (0, 0, 12, 1, 0, 0, 1) and again.embedded == 0
    moved = after[point_id_for(file_content_hash(photos / "moved-p1.png"))][0]
    assert moved["paths"] == [(photos / "moved-p1.png").as_posix()]


def _hang_once_actor(signals: Path) -> type[EmbedActor]:
    """An actor that, on its second batch, writes its pid and waits to be killed (once)."""

    class HangOnce(EmbedActor):
        calls = 0

        def __call__(self, batch):
            self.calls += 1
            if self.calls == 2 and not (signals / "killed").exists():
                (signals / "pid").write_text(str(os.getpid()))
                time.sleep(300)
            return super().__call__(batch)

    return HangOnce


def test_an_actor_killed_mid_batch_is_restarted_and_nothing_is_lost_or_doubled(
        local_ray, tiny_model, tmp_path):
    root = tmp_path / "photos"
    for i in range(24):
        make_image(root / f"p{i:02d}.png", seed=100 + i)
    signals = tmp_path / "signals"
    signals.mkdir()
    killed: list[int] = []

    def killer() -> None:
        deadline = time.monotonic() + 240
        while not (signals / "pid").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        if (signals / "pid").exists():
            pid = int((signals / "pid").read_text())
            (signals / "killed").write_text("1")
            os.kill(pid, signal.SIGKILL)  # a real kill of the actor's process, mid-batch
            killed.append(pid)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    seen_seqs: list[int] = []
    seen_pids: list[int] = []

    def watch(batch) -> None:
        seen_seqs.extend(int(s) for s in batch["seq"])
        seen_pids.extend(int(p) for p in batch["actor_pid"])

    report, points = _ray_run(tiny_model, root, tmp_path / "store",
                              embed_actor=_hang_once_actor(signals), on_batch=watch)
    thread.join(5)

    assert killed, "the actor never reached its second batch"
    assert killed[0] in seen_pids and set(seen_pids) - {killed[0]}  # a new actor took over
    assert sorted(seen_seqs) == list(range(24))  # every file once: none lost, none doubled
    assert _counts(report) == (24, 0, 0, 0, 0, 0, 0) and report.embedded == 24
    hashes = {point_id_for(file_content_hash(p)) for p in root.iterdir()}
    assert set(points) == hashes and all(len(p[0]["paths"]) == 1 for p in points.values())


def test_cli_ingests_a_csv_list_of_paths_on_ray(local_ray, tmp_path):
    images = tmp_path / "images"
    paths = [make_image(images / f"i{i}.png", seed=200 + i) for i in range(5)]
    make_image(images / "not-listed.png", seed=299)
    listing = tmp_path / "batch.csv"
    rows = ["path,caption", f"{paths[0]},absolute", "images/i1.png,relative to the list"]
    rows += [f"{p},x" for p in paths[2:]] + ["images/missing.png,gone"]
    listing.write_text("\n".join(rows) + "\n")
    store = tmp_path / "store"
    result = CliRunner().invoke(app, ["ingest", str(listing), "--engine", "ray", "--store",
                                      str(store), "--batch-size", "2", "--no-progress",
                                      "--model", "twinrank-tiny"])
    assert result.exit_code == 0, result.output
    assert "added 5," in result.output and "failed 1" in result.output
    assert "missing.png" in result.output
    with open_store(store) as opened:
        stored = {p for _, payload in opened.iter_payloads() for p in payload["paths"]}
    assert stored == {p.as_posix() for p in paths}


def test_local_engine_refuses_ray_only_sources_with_one_sentence(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("a.jpg\n")
    result = CliRunner().invoke(app, ["ingest", str(listing), "--store", str(tmp_path / "s")])
    assert result.exit_code == 1
    assert "needs --engine ray" in result.output and "Traceback" not in result.output


def test_the_in_process_ingest_path_never_imports_ray():
    code = ("import sys; import twinrank.cli; import twinrank.ingest.job; "
            "import twinrank.ingest.engines; import twinrank.ingest.runner; "
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


class _RecordingClient:
    """Stands in for a Qdrant cluster (no server can run here): records the calls."""

    def __init__(self) -> None:
        self.created: dict = {}

    def create_collection(self, name, **kwargs):
        self.created = kwargs

    def create_payload_index(self, *args, **kwargs):
        pass


def test_a_new_server_collection_gets_the_shards_replicas_and_write_consistency(tiny_model):
    client = _RecordingClient()
    info = collection_info(tiny_model, "twinrank-tiny")
    _create_collection(client, "photos", info, ClusterLayout(6, 2, 2))
    assert (client.created["shard_number"], client.created["replication_factor"],
            client.created["write_consistency_factor"]) == (6, 2, 2)


_DRIVER = """
import os, signal, sys
from pathlib import Path
from twinrank.ingest import IngestConfig
from twinrank.ingest.collection import collection_info
from twinrank.ingest.ray_engine import RayOptions, run_ray_ingest
from twinrank.ingest.ray_stages import ModelSpec
from twinrank.models import create_model
from twinrank.models.encode import ImageEmbedder
from twinrank.store import open_store

root, store_path = Path(sys.argv[1]), Path(sys.argv[2])
model = create_model("twinrank-tiny", device="cpu")
info = collection_info(model, "twinrank-tiny")
spec = ModelSpec("twinrank-tiny", None, model.model_id, info.vector_size,
                 (info.token_count, info.token_width), device="cpu")
batches = []

def kill_after_three(batch):
    batches.append(batch)
    if len(batches) == 4:  # three batches handed to the writer: kill -9 ourselves
        os.kill(os.getpid(), signal.SIGKILL)

run_ray_ingest(IngestConfig(root=root, batch_size=4, progress=False), spec,
               ImageEmbedder(model), open_store(store_path, info),
               RayOptions(files_per_task=4, local_cpus=2), on_batch=kill_after_three)
"""


@pytest.mark.slow
@pytest.mark.timeout(1200)  # two Ray starts and two runs; minutes on a loaded machine
def test_a_killed_ray_driver_resumes_with_nothing_lost_or_doubled(local_ray, tmp_path):
    root = tmp_path / "photos"
    for i in range(40):
        make_image(root / f"p{i:02d}.png", seed=300 + i)
    store = tmp_path / "store"
    driver = subprocess.Popen([sys.executable, "-c", _DRIVER, str(root), str(store)],
                              start_new_session=True)
    assert driver.wait(timeout=600) == -signal.SIGKILL  # killed after 12 of 40 files
    with contextlib.suppress(ProcessLookupError):
        os.killpg(driver.pid, signal.SIGKILL)  # the local Ray that driver started

    result = CliRunner().invoke(app, ["ingest", str(root), "--engine", "ray", "--store",
                                      str(store), "--batch-size", "4", "--no-progress"])
    assert result.exit_code == 0, result.output
    added, unchanged = (int(n) for n in re.search(
        r"added (\d+), updated 0, unchanged (\d+)", result.output).groups())
    assert unchanged >= 8 and added + unchanged == 40  # resumed, not redone
    with open_store(store) as opened:
        payloads = dict(opened.iter_payloads())
    assert set(payloads) == {point_id_for(file_content_hash(p)) for p in root.iterdir()}
    assert all(len(p["paths"]) == 1 for p in payloads.values())

"""Crash safety: a real `twinrank ingest` process killed with SIGKILL mid-run, twice; the
store must open, hold no duplicates, keep every point's cached tokens and no stray ones
(``test_token_file`` kills a writer at each step of a token write), and the next run must
finish the job exactly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

from conftest import make_image
from test_token_file import assert_tokens_consistent

from twinrank.store import open_store

ROOT = Path(__file__).resolve().parents[1]
PROGRESS = re.compile(r"\| *(\d+)/(\d+) \[")


def _ingest_command(folder: Path, store: Path) -> list[str]:
    return [sys.executable, str(ROOT / "cli.py"), "ingest", str(folder), "--store", str(store),
            "--batch-size", "2", "--workers", "1", "--threads", "1", "--model", "twinrank-tiny"]


def _run_and_kill(folder: Path, store: Path, at_least: int) -> str:
    """Start an ingest, SIGKILL it once its progress bar has passed ``at_least`` images."""
    child = subprocess.Popen(_ingest_command(folder, store), cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=os.environ | {"COLUMNS": "100"})
    seen = ""
    done = threading.Event()

    def watch() -> None:
        nonlocal seen
        assert child.stderr is not None
        while chunk := child.stderr.read1(4096):  # type: ignore[attr-defined]
            seen += chunk.decode(errors="replace")
            counts = [int(n) for n, _ in PROGRESS.findall(seen[-400:])]
            if counts and max(counts) >= at_least:
                child.send_signal(signal.SIGKILL)
                break
        done.set()

    threading.Thread(target=watch, daemon=True).start()
    done.wait(240)
    if child.poll() is None:
        child.send_signal(signal.SIGKILL)
    child.wait(30)
    assert child.returncode == -signal.SIGKILL, seen[-2000:]
    return seen


def _state(store_path: Path) -> dict[str, list[str]]:
    store = open_store(store_path)  # must open: the store is never left unreadable
    try:
        state = {pid: sorted(p["paths"]) for pid, p in store.iter_payloads()}
        assert store.count() == len(state)
        assert_tokens_consistent(store)
    finally:
        store.close()
    return state


def test_kill_9_mid_run_then_resume_finishes_with_no_duplicates(tmp_path):
    folder = tmp_path / "photos"
    for i in range(400):
        make_image(folder / f"{i // 50}" / f"img{i:03d}.png", seed=i, size=(96, 96))
    for i in range(0, 400, 40):  # a few identical copies, so points != files
        (folder / "copies").mkdir(exist_ok=True)
        (folder / "copies" / f"dup{i}.png").write_bytes(
            (folder / f"{i // 50}" / f"img{i:03d}.png").read_bytes())
    store = tmp_path / "store"
    _run_and_kill(folder, store, at_least=60)
    after_first = _state(store)
    assert 0 < len(after_first) < 400
    _run_and_kill(folder, store, at_least=len(after_first) + 80)
    after_second = _state(store)
    assert len(after_first) <= len(after_second) < 400
    finished = subprocess.run(_ingest_command(folder, store) + ["--no-progress"], cwd=ROOT,
                              capture_output=True, text=True, timeout=240)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "failed 0" in finished.stdout
    final = _state(store)
    assert len(final) == 400
    all_paths = [p for paths in final.values() for p in paths]
    assert len(all_paths) == len(set(all_paths)) == 410
    assert {Path(p).name for p in all_paths} == {p.name for p in folder.rglob("*.png")}
    assert sum(len(paths) == 2 for paths in final.values()) == 10

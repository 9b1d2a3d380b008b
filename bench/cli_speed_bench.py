"""What a user waits for at the command line: whole processes, fast path against torch.

    python -m bench.cli_speed_bench                    # 600 photos, ViT-B-32 + the demo
    python -m bench.cli_speed_bench --n 60 --runs 3 --out /tmp/s.json   # a smoke run

It builds, outside the timing: 600 photo-sized JPEGs; a ViT-B-32 twinrank model whose
reranker is trained (``twinrank train`` for a few steps on generated scenes; random
towers, the compute is the same as with real weights); its collection of the photos
(``twinrank ingest``, which writes the fast query path); the shipped demo model's
collection of 300 generated scenes. A copy of each collection without its ``fast/``
folder is the torch-path baseline. Then, each command as its own process, A and B in
turn (A B A B ...) so load from other work hits both alike:

- ``twinrank search "..." -k 20`` with reranking: the fast path vs the torch path;
- ``twinrank ingest`` again over the unchanged photos (no-op) vs ``python -c "import torch"``
  (the least a run that imports torch pays);
- ``twinrank --help`` vs ``python -c pass``.

Each figure is wall seconds, CPU seconds (user + sys) and peak RSS (``ru_maxrss`` of the
process, from ``os.wait4``): medians, with min and max. The machine's load average is
recorded: on a shared machine wall time is inflated by others' work, CPU time much less.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import cpu_name

RESULTS = Path(__file__).parent / "results" / "cli_speed_bench.json"
QUERY = "a small red circle left of a large blue square"
TWINRANK = [str(Path(sys.executable).parent / "twinrank")]


def run_measured(command: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    """One process: wall seconds, CPU seconds and peak RSS (MB), its output discarded."""
    began = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env=env)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - began
    stderr = process.stderr.read().decode() if process.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {stderr[-2000:]}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_rss_mb": usage.ru_maxrss / 1024}


def paired(a: list[str], b: list[str], runs: int) -> dict[str, object]:
    """A and B in turn, one warm-up each, then ``runs`` pairs; medians, min, max, ratio."""
    run_measured(a), run_measured(b)
    rows: dict[str, list[dict[str, float]]] = {"a": [], "b": []}
    for _ in range(runs):
        rows["a"].append(run_measured(a))
        rows["b"].append(run_measured(b))
    out: dict[str, object] = {"a": _shown(a), "b": _shown(b)}
    for side in ("a", "b"):
        out[side + "_figures"] = {
            key: {"median": round(statistics.median(r[key] for r in rows[side]), 3),
                  "min": round(min(r[key] for r in rows[side]), 3),
                  "max": round(max(r[key] for r in rows[side]), 3)}
            for key in ("wall_s", "cpu_s", "peak_rss_mb")}
    out["wall_ratio_a_over_b_median"] = round(statistics.median(
        x["wall_s"] / y["wall_s"] for x, y in zip(rows["a"], rows["b"], strict=True)), 3)
    return out


def _shown(command: list[str]) -> str:
    """A command as a user types it: no interpreter or temporary paths."""
    words = ["twinrank" if w == TWINRANK[0] else "python" if w == sys.executable else
             Path(w).name if w.startswith(tempfile.gettempdir()) else w for w in command]
    return " ".join(f'"{w}"' if " " in w else w for w in words)


def build(work: Path, n: int, train_steps: int) -> dict[str, Path]:
    """Photos, a trained ViT-B-32 model folder, and the two collections (+ torch copies)."""
    from bench.ingest_bench import make_photos

    def twinrank(*args: str) -> None:
        subprocess.run([*TWINRANK, *args], check=True, stdout=subprocess.DEVNULL)

    if len(list((work / "photos").rglob("*.JPG"))) != n:  # --work keeps a finished build
        shutil.rmtree(work / "photos", ignore_errors=True)
        shutil.rmtree(work / "store-vitb32", ignore_errors=True)
        make_photos(work / "photos", n)
    if not (work / "scenes" / "scenes.json").is_file():
        twinrank("make-scenes", str(work / "scenes"), "--n-train", "64", "--n-test", "300",
                 "--image-size", "128")
    if not (work / "vitb32" / "config.json").is_file():
        twinrank("train", "--data", f"scenes:{work / 'scenes'}:train:en", "--model",
                 "ViT-B-32", "--out", str(work / "vitb32"), "--steps", str(train_steps),
                 "--batch-size", "8", "--warmup-steps", "0", "--device", "cpu")
    # ingest is idempotent: a finished collection is a no-op here
    twinrank("ingest", str(work / "photos"), "--store", str(work / "store-vitb32"),
             "--model", str(work / "vitb32"), "--no-progress")
    from twinrank.models import DEMO_MODEL

    twinrank("ingest", str(work / "scenes" / "images" / "test"), "--store",
             str(work / "store-demo"), "--model", DEMO_MODEL, "--no-progress")
    stores = {}
    for name in ("vitb32", "demo"):
        fast = work / f"store-{name}"
        if not (fast / "fast" / "fast.json").is_file():
            raise RuntimeError(f"ingest wrote no fast path into {fast}")
        torch_copy = work / f"store-{name}-torch"
        shutil.rmtree(torch_copy, ignore_errors=True)
        shutil.copytree(fast, torch_copy, ignore=shutil.ignore_patterns("fast"))
        stores[name], stores[name + "-torch"] = fast, torch_copy
    return stores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=600, help="photos in the ViT-B-32 collection")
    parser.add_argument("--runs", type=int, default=5, help="counted pairs per comparison")
    parser.add_argument("--train-steps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--work", type=Path, default=None,
                        help="keep the photos, model and collections here and reuse them")
    parser.add_argument("--only", choices=("build", "all"), default="all",
                        help="build: make the collections and stop")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="twinrank-cli-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        began = time.perf_counter()
        if args.only == "build":
            build(work, args.n, args.train_steps)
            return
        # built by a child: this process stays small (stdlib only), because a child's peak
        # RSS (ru_maxrss) counts the parent's pages it was forked with, before its exec
        subprocess.run([sys.executable, "-m", "bench.cli_speed_bench", "--only", "build",
                        "--work", str(work), "--n", str(args.n),
                        "--train-steps", str(args.train_steps)], check=True)
        stores = {name: work / f"store-{name}" for name in ("vitb32", "demo")}
        stores |= {name + "-torch": work / f"store-{name}-torch" for name in ("vitb32", "demo")}
        build_s = time.perf_counter() - began
        load_before = os.getloadavg()[0]
        search = [*TWINRANK, "search", QUERY, "-k", "20", "--store"]
        results = {
            f"search_{name}": paired([*search, str(stores[name])],
                                     [*search, str(stores[name + "-torch"])], args.runs)
            for name in ("vitb32", "demo")}
        results["noop_ingest"] = paired(
            [*TWINRANK, "ingest", str(work / "photos"), "--store", str(stores["vitb32"]),
             "--no-progress"], [sys.executable, "-c", "import torch"], args.runs)
        results["help"] = paired([*TWINRANK, "--help"], [sys.executable, "-c", "pass"],
                                 args.runs)
        load_after = os.getloadavg()[0]
        points = {name: _points(stores[name]) for name in ("vitb32", "demo")}
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    result = {
        "command": " ".join(["python -m bench.cli_speed_bench",
                             *("DIR" if a == str(args.work) else a for a in sys.argv[1:])]),
        "query": QUERY, "photos": args.n, "photo_size": "1024x768 JPEG",
        "models": {"vitb32": f"ViT-B-32 towers (random) + fusion head, {args.train_steps} "
                             f"twinrank train steps (reranker_trained)",
                   "demo": "the shipped demo model, generated scenes (128 px)"},
        "collection_points": points,
        "build_seconds": round(build_s, 1),
        "targets": {"search_wall_s": 1.0, "search_peak_rss_mb": 600, "noop_ingest_wall_s": 1.0,
                    "help_wall_s": 0.5},
        "results": results,
        "cpu": cpu_name(), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "load_average_1m": {"before": round(load_before, 2), "after": round(load_after, 2)},
        "note": "a = twinrank as shipped, b = the baseline (torch path: the same collection "
                "without fast/; import torch; python -c pass). Shared machine: other work "
                "loads it (load_average_1m), which inflates wall time; cpu_s much less.",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def _points(collection: Path) -> int:
    from twinrank.store import open_store

    with open_store(collection) as store:
        return store.count()


if __name__ == "__main__":
    main()

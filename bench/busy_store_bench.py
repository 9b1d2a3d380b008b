"""Searches while an ingest runs: failures, latency, the ingest's slowdown (issue 33, item 3).

    python -m bench.busy_store_bench                          # both scenarios, 60 s each
    python -m bench.busy_store_bench --baseline fba5115~1     # + the code before, same run
    python -m bench.busy_store_bench --scenarios small --seconds 10 --scale 0.2 --out /tmp/b.json

Each scenario (the issue's two): a collection of the shipped demo model holding a few
images, then ``twinrank ingest`` adds N more while ``--cli`` loops each run
``twinrank search ... -k 10`` (a whole process, the fast path) one after another and
``--clients`` Python processes each loop ``SearchClient.search`` on one open client. Every
process is real and so is the store. Measured, in one run on one machine:

- the ingest alone (no searches), then the ingest under that load, each the whole
  ``twinrank ingest`` process (wall seconds) and the time it reports itself;
- every search that starts while the ingest runs, and during the rest of ``--seconds``
  after it starts: how many, how many failed (and why), p50/p95/max latency, how many
  processes said they were waiting (they must say it once at most);
- a control: the same load searching a *copy* of the store while the ingest writes its
  own, so that the ingest's slowdown from sharing the store is told apart from its
  slowdown from sharing two cores with 20-30 search processes;
- the store afterwards: its count, its ids unique, every added file there, the same ids as
  the ingest alone wrote;
- with ``--baseline REV``: the loaded run again with the code of that commit (its tree
  exported to a temporary folder; every process imports the package from there).
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
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import ROOT, cpu_name

RESULTS = Path(__file__).parent / "results" / "busy_store_bench.json"
QUERY = "a small red circle left of a large blue square"
WAITING = "Waiting for the store"
BASE_IMAGES = 40  # in the collection before the ingest starts
# Every process runs the package from a folder: this checkout, or a baseline's tree.
LAUNCH = ("import sys, twinrank; twinrank.__path__ = [sys.argv.pop(1)]; "
          "sys.argv[0] = 'twinrank'; from twinrank.cli import main; sys.exit(main())")
CLIENT = """
import json, sys, time
from pathlib import Path
import twinrank
twinrank.__path__ = [sys.argv[1]]
from twinrank.search import SearchClient
store, stop = Path(sys.argv[2]), Path(sys.argv[3])
client = SearchClient(store)
print("ready", flush=True)
rows = []
while not stop.exists():
    began, error = time.time(), None
    try:
        client.search(sys.argv[4], k=10)
    except Exception as failure:
        error = f"{type(failure).__name__}: {failure}"
    rows.append([began, time.time() - began, error])
client.close()
print(json.dumps(rows), flush=True)
"""


@dataclass(frozen=True)
class Scenario:
    cli: int  # `twinrank search` loops
    clients: int  # SearchClient processes
    images: int  # added by the ingest
    size: tuple[int, int]  # pixels of each image


SCENARIOS = {
    "issue_300": Scenario(cli=20, clients=3, images=300, size=(320, 240)),
    "issue_600_photos": Scenario(cli=30, clients=0, images=600, size=(1024, 768)),
    "small": Scenario(cli=6, clients=1, images=60, size=(320, 240)),
}


def twinrank(code: Path, *args: str) -> list[str]:
    return [sys.executable, "-c", LAUNCH, str(code), *args]


def build(work: Path, scenario: Scenario, model: str) -> tuple[Path, Path]:
    """The images to add and a collection of ``BASE_IMAGES`` others."""
    from bench.ingest_bench import make_photos

    photos, first = work / "photos", work / "first"
    make_photos(photos, scenario.images + BASE_IMAGES, scenario.size)
    first.mkdir()
    for path in sorted(photos.rglob("*.JPG"))[scenario.images:]:
        path.rename(first / path.name)
    subprocess.run(twinrank(ROOT, "ingest", str(first), "--store", str(work / "base"),
                            "--model", model, "--no-progress"), check=True,
                   stdout=subprocess.DEVNULL)
    return photos, work / "base"


def ingest(code: Path, photos: Path, store: Path) -> dict[str, Any]:
    """One whole `twinrank ingest` process: wall seconds, CPU seconds (user + sys: what it
    worked, however long it waited for a core), its own figure, its output."""
    began = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(twinrank(code, "ingest", str(photos), "--store",
                                            str(store), "--no-progress"),
                                   stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - began
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    figures = {"wall_s": round(wall, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
               "waiting_lines": stderr.count(WAITING)}
    if os.waitstatus_to_exitcode(status) != 0:  # a result too: the old hand-over failed so
        return figures | {"failed": (stderr.strip().splitlines() or ["?"])[-1][:300]}
    summary = next(line for line in stdout.splitlines() if line.startswith("added"))
    reported = float(summary.rsplit(" in ", 1)[1].split(" s")[0])
    return figures | {"reported_s": reported, "summary": summary}


def loaded(code: Path, scenario: Scenario, photos: Path, searched: Path, written: Path,
           seconds: float) -> dict[str, Any]:
    """The ingest into ``written`` while the searches loop on ``searched``."""
    stop = threading.Event()
    searches: list[dict[str, Any]] = []
    command = twinrank(code, "search", QUERY, "--store", str(searched), "-k", "10")

    def loop() -> None:
        while not stop.is_set():
            began = time.time()
            done = subprocess.run(command, capture_output=True, text=True)
            said = (done.stderr + done.stdout).strip().splitlines() or [f"exit {done.returncode}"]
            searches.append({"kind": "cli", "began": began, "s": time.time() - began,
                             "error": said[-1][:300] if done.returncode else None,
                             "waiting_lines": done.stderr.count(WAITING)})

    stop_file = searched.parent / f"stop-{searched.name}"
    stop_file.unlink(missing_ok=True)
    clients = [subprocess.Popen([sys.executable, "-c", CLIENT, str(code), str(searched),
                                 str(stop_file), QUERY], text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE) for _ in range(scenario.clients)]
    not_started = []
    for client in clients:
        assert client.stdout is not None
        if client.stdout.readline().strip() != "ready":  # it could not open the store
            _, err = client.communicate(timeout=60)
            not_started.append((err.strip().splitlines() or ["exit"])[-1][:300])
    clients = [client for client in clients if client.returncode is None]
    loops = [threading.Thread(target=loop, daemon=True) for _ in range(scenario.cli)]
    for thread in loops:
        thread.start()
    time.sleep(5)  # the loops in full swing before the ingest starts
    window_start = time.time()
    alone_load = os.getloadavg()[0]
    result = ingest(code, photos, written)
    time.sleep(max(0.0, window_start + seconds - time.time()))
    stop.set()
    stop_file.touch()
    for thread in loops:
        thread.join()
    client_waits = []  # a client is one process: it says it waits once, not per search
    for client in clients:
        out, err = client.communicate(timeout=300)
        rows = json.loads(out.strip().splitlines()[-1])
        searches += [{"kind": "client", "began": b, "s": s, "error": e, "waiting_lines": 0}
                     for b, s, e in rows]
        client_waits.append(err.count(WAITING))
    window = [s for s in searches if s["began"] >= window_start]
    return {"ingest": result, "window_s": round(time.time() - window_start, 1),
            "load_average_1m_at_start": round(alone_load, 2),
            "cli": _figures([s for s in window if s["kind"] == "cli"]),
            "clients": _figures([s for s in window if s["kind"] == "client"]),
            "clients_that_could_not_open": not_started,
            "waiting_lines_per_client_process": client_waits}


def _figures(rows: list[dict[str, Any]]) -> dict[str, Any]:
    if not rows:
        return {"searches": 0}
    seconds = sorted(r["s"] for r in rows)
    errors = [r["error"] for r in rows if r["error"]]
    return {"searches": len(rows), "failed": len(errors),
            "failures": sorted(set(errors))[:5],
            "p50_s": round(statistics.median(seconds), 3),
            "p95_s": round(seconds[min(len(seconds) - 1, int(0.95 * len(seconds)))], 3),
            "max_s": round(seconds[-1], 3),
            "said_waiting": sum(r["waiting_lines"] > 0 for r in rows),
            "said_waiting_more_than_once": sum(r["waiting_lines"] > 1 for r in rows)}


def contents(store: Path, photos: Path) -> dict[str, Any]:
    """What the store holds: its count, whether ids repeat, which added files are missing."""
    from twinrank.store import open_store

    with open_store(store) as opened:
        payloads = list(opened.iter_payloads())
        count = opened.count()
    ids = [point_id for point_id, _ in payloads]
    paths = {path for _, payload in payloads for path in payload.get("paths", [])}
    missing = [str(p) for p in photos.rglob("*.JPG") if str(p.resolve()) not in paths]
    return {"count": count, "ids": len(ids), "unique_ids": len(set(ids)),
            "added_files_missing": len(missing), "_ids": sorted(ids)}


def run_scenario(name: str, scenario: Scenario, work: Path, seconds: float,
                 baseline: Path | None, control: bool) -> dict[str, Any]:
    from twinrank.models import DEMO_MODEL

    work.mkdir(parents=True)
    photos, base = build(work, scenario, DEMO_MODEL)

    def copy(label: str) -> Path:
        target = work / label
        shutil.copytree(base, target)
        return target

    out: dict[str, Any] = {"scenario": asdict(scenario), "base_images": BASE_IMAGES}
    alone = copy("alone")
    out["ingest_alone"] = ingest(ROOT, photos, alone)
    out["loaded"] = loaded(ROOT, scenario, photos, copy("shared"), work / "shared", seconds)
    if control:
        out["control_other_store"] = loaded(ROOT, scenario, photos, copy("searched"),
                                            copy("written"), seconds)
    if baseline is not None:
        out["baseline_loaded"] = loaded(baseline, scenario, photos, copy("before"),
                                        work / "before", seconds)
    expected = contents(alone, photos)
    out["store_after"] = {}
    for label in ("alone", "shared", "before"):
        if (work / label).exists():
            found = contents(work / label, photos)
            found["same_ids_as_alone"] = found.pop("_ids") == expected["_ids"]
            out["store_after"][label] = found
    out["expected_points"] = BASE_IMAGES + scenario.images
    for key in ("wall_s", "cpu_s"):
        runs = {"alone": out["ingest_alone"], "loaded": out["loaded"]["ingest"]}
        if control:
            runs["control"] = out["control_other_store"]["ingest"]
        out[f"ingest_{key}_ratios"] = {f"{name}_over_alone": round(run[key] / runs["alone"][key], 2)
                                       for name, run in runs.items() if name != "alone"}
        if control:
            out[f"ingest_{key}_ratios"]["loaded_over_control"] = round(
                runs["loaded"][key] / runs["control"][key], 2)
    print(json.dumps({name: out}, indent=2), flush=True)
    return out


def export_tree(revision: str, folder: Path) -> Path:
    """The package as of ``revision``, in ``folder``: what a baseline's processes import."""
    folder.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", revision], cwd=ROOT, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", nargs="+", default=["issue_300", "issue_600_photos"],
                        choices=sorted(SCENARIOS))
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="searches loop at least this long after the ingest starts")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="fraction of each scenario's images (a smoke run)")
    parser.add_argument("--baseline", default=None,
                        help="a commit to run the loaded case with too (before the change)")
    parser.add_argument("--no-control", action="store_true",
                        help="skip the control run (searches on a copy of the store)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="twinrank-busy-bench-"))
    results: dict[str, Any] = {}
    try:
        baseline = export_tree(args.baseline, work / "baseline") if args.baseline else None
        for name in args.scenarios:
            scenario = SCENARIOS[name]
            scenario = Scenario(scenario.cli, scenario.clients,
                                max(1, round(scenario.images * args.scale)), scenario.size)
            results[name] = run_scenario(name, scenario, work / name, args.seconds,
                                         baseline, not args.no_control)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True).stdout.strip()
    record = {
        "command": " ".join(["python -m bench.busy_store_bench", *sys.argv[1:]]),
        "code": revision, "baseline": args.baseline, "query": QUERY,
        "model": "the shipped demo model (models/demo)", "results": results,
        "cpu": cpu_name(), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "note": "loaded: the searches and the ingest share the store; control_other_store: "
                "the same load searches a copy, so the ingest shares only the CPUs; "
                "ingest times are whole processes (wall_s) and the ingest's own figure "
                "(reported_s). Searches counted: those that began after the ingest did.",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # failure messages name the stores: no machine path goes into the record
    args.out.write_text(json.dumps(record, indent=2).replace(str(work), "DIR") + "\n")


if __name__ == "__main__":
    main()

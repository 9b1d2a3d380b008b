"""How fast the app answers in a real browser: Enter to redrawn results, 1 and 5 sessions.

    python -m bench.ui_latency --store ~/.twinrank/demo/store-busy   # after `twinrank demo`

For each query the browser's clock runs from the Enter key to the moment every reranked
card shows the caption the in-process client gives for that query with its image loaded.
The same queries are first timed in-process (text encoding + vector search + rerank), and
each answer's own timing line is read off the page, so the JSON holds the page's overhead
(latency minus the query's own work, measured at the same moment: robust to a loaded
machine) next to the engine's time.
With --baseline the app is also run twice more in the same run on the same machine: with
Streamlit's default full garbage collection after every script run (which ``twinrank ui``
turns off), and with its results fragment off (every query reruns the whole script).
Headless Chromium is Debian's /usr/bin/chromium; nothing is downloaded.
Writes bench/results/ui_latency.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import socket
import statistics
import time
from pathlib import Path
from typing import Any

from bench import cpu_name
from twinrank.search import SearchClient
from twinrank.ui import launch
from twinrank.ui.examples import read_examples
from twinrank.ui.launch import start_ui, stop, wait_until_ready
from twinrank.ui.views import caption

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
K = 8
FRAGMENT_ENV = "TWINRANK_UI_FRAGMENT"
RESULTS = Path(__file__).with_name("results") / "ui_latency.json"
READY_JS = """([expected]) => {
    const host = [...document.querySelectorAll('.st-key-results *')].find(e => e.shadowRoot);
    const root = host ? host.shadowRoot : null;
    for (let i = 0; i < expected.length; i++) {
        const card = root && root.querySelector(`[data-card="after-${i + 1}"]`);
        const img = card && card.querySelector('img');
        const text = card && card.querySelector('figcaption');
        if (!img || !img.complete || img.naturalWidth === 0 || !text) return false;
        if (text.textContent !== expected[i]) return false;
    }
    window.__twinrank_done = performance.now();
    return true;
}"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def pick_queries(store: Path, count: int) -> list[str]:
    """The demo's examples, then captions of the corpus's images (generated scenes)."""
    queries = [e.query for e in read_examples(store)]
    captions = store.parent / "scenes-busy" / "test.en.jsonl"
    if captions.exists():
        for line in captions.read_text().splitlines():
            queries.append(min(json.loads(line)["captions"], key=len))
    queries = list(dict.fromkeys(queries))
    if len(queries) < 2:
        raise SystemExit(f"No queries for {store}: run `twinrank demo --no-ui` first.")
    return queries[:count]


def in_process(store: Path, queries: list[str]) -> tuple[dict[str, list[str]], list[float]]:
    """What the app should show for each query (after-column captions) and the query time
    (encode + search + rerank) of the same client, after one warm-up query."""
    expected: dict[str, list[str]] = {}
    times: list[float] = []
    with SearchClient(store) as client:
        client.compare(queries[0], k=K)
        for query in queries:
            started = time.perf_counter()
            _, after = client.compare(query, k=K)
            times.append((time.perf_counter() - started) * 1000)
            expected[query] = [caption(hit, "after", K) for hit in after]
    return expected, times


async def session(browser: Any, url: str, queries: list[str],
                  expected: dict[str, list[str]], timeout_ms: int
                  ) -> tuple[list[float], list[float], int]:
    """One browser session running ``queries`` in turn: latencies in ms, the part of each
    that was not the query's own work (the page's timing line: encode, search, rerank,
    thumbnails), and the errors."""
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    page = await context.new_page()
    latencies: list[float] = []
    overheads: list[float] = []
    errors = 0
    try:
        await page.goto(url, timeout=timeout_ms)
        box = page.get_by_label("What are you looking for?")
        await box.wait_for(timeout=timeout_ms)
        for query in queries:
            try:
                await box.fill(query)
                await page.evaluate("window.__twinrank_start = performance.now()")
                await box.press("Enter")
                await page.wait_for_function(READY_JS, arg=[expected[query]],
                                             timeout=timeout_ms, polling="raf")
                latency = await page.evaluate("window.__twinrank_done - window.__twinrank_start")
                latencies.append(latency)
                engine = page_engine_ms(await page.get_by_text(
                    re.compile(r"total [0-9.]+ ms · thumbnails")).first.inner_text())
                if engine is not None:
                    overheads.append(latency - engine)
                if await page.locator("[data-testid='stAlert']").count():
                    errors += 1
            except Exception as error:  # a timeout or a closed page is an error, counted
                print(f"session error: {type(error).__name__}: {str(error)[:200]}")
                errors += 1
    finally:
        await context.close()
    return latencies, overheads, errors


async def drive(url: str, sessions: int, queries: list[str], expected: dict[str, list[str]],
                timeout_ms: int) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                   args=FLAGS)
        try:  # each session starts at another query, so sessions do not move in lockstep
            runs = await asyncio.gather(*[
                session(browser, url, queries[i:] + queries[:i], expected, timeout_ms)
                for i in range(sessions)])
        finally:
            await browser.close()
    latencies = [ms for run, _, _ in runs for ms in run]
    overheads = [ms for _, run, _ in runs for ms in run]
    return {"sessions": sessions, "queries": len(latencies),
            "errors": sum(errors for _, _, errors in runs), **summary(latencies),
            "page_overhead": summary(overheads)}


def page_engine_ms(timing: str) -> float | None:
    """The query's own milliseconds from the page's timing line ('... total 12.0 ms ·
    thumbnails 1.0 ms · ...'): encode + search + rerank, plus thumbnails."""
    total = re.search(r"total ([0-9.]+) ms", timing)
    thumbs = re.search(r"thumbnails ([0-9.]+) ms", timing)
    if total is None or thumbs is None:
        return None
    return float(total.group(1)) + float(thumbs.group(1))


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    return {"p50_ms": statistics.median(ordered),
            "p95_ms": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
            "mean_ms": statistics.fmean(ordered)}


def measure_app(store: Path, queries: list[str], expected: dict[str, list[str]],
                session_counts: list[int], timeout_ms: int, fragment: bool = True,
                post_script_gc: bool = False) -> list[dict[str, Any]]:
    """The app as ``twinrank ui`` starts it, or a baseline: ``fragment=False`` reruns the
    whole page on every query, ``post_script_gc=True`` restores Streamlit's default full
    garbage collection after every script run."""
    os.environ[FRAGMENT_ENV] = "1" if fragment else "0"
    shipped = launch.streamlit_command

    def command(host: str, port: int) -> list[str]:
        args = shipped(host, port)
        if post_script_gc:
            at = args.index("--runner.postScriptGC")
            args[at + 1] = "true"
        return args

    launch.streamlit_command = command
    port = free_port()
    process = start_ui(store, port=port, new_session=True, threads=1)
    try:
        wait_until_ready(f"http://127.0.0.1:{port}", process, timeout=timeout_ms / 1000)
        asyncio.run(drive(f"http://127.0.0.1:{port}", 1, queries[:2], expected, timeout_ms))
        return [asyncio.run(drive(f"http://127.0.0.1:{port}", n, queries, expected,
                                  timeout_ms)) for n in session_counts]
    finally:
        stop(process)
        launch.streamlit_command = shipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--queries", type=int, default=12)
    parser.add_argument("--sessions", default="1,5")
    parser.add_argument("--baseline", action="store_true",
                        help="Also run two baselines: Streamlit's full garbage collection "
                             "after every script run, and the results fragment off.")
    parser.add_argument("--timeout-s", type=float, default=120.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    store = args.store.expanduser()
    queries = pick_queries(store, args.queries)
    expected, engine_ms = in_process(store, queries)
    counts = [int(n) for n in args.sessions.split(",")]
    timeout_ms = int(args.timeout_s * 1000)
    result: dict[str, Any] = {
        "command": "python -m bench.ui_latency --store STORE " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in (("queries", args.queries),
                                                        ("sessions", args.sessions)))
        + (" --baseline" if args.baseline else ""),
        "store": "the demo's collection (twinrank demo: 300 busy scenes, the shipped model)",
        "k": K, "queries": queries,
        "in_process_query": summary(engine_ms),
        "app": measure_app(store, queries, expected, counts, timeout_ms),
        "machine": f"{cpu_name()} ({platform.machine()}), {os.cpu_count()} CPUs shared by "
                   f"the browser, the app server (1 thread for the models) and this script",
    }
    if args.baseline:
        result["baseline_post_script_gc"] = measure_app(store, queries, expected, counts,
                                                        timeout_ms, post_script_gc=True)
        result["baseline_whole_page_rerun"] = measure_app(store, queries, expected, counts,
                                                          timeout_ms, fragment=False)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "queries"}, indent=2))


if __name__ == "__main__":
    main()

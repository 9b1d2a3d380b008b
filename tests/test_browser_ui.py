"""End to end in a real headless Chromium: `twinrank ui` on a generated collection, a query,
both columns checked against SearchClient, then "more like this". Screenshots are saved
under test-artifacts/browser/ (gitignored).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_ui import QUERY, K, build_store

from twinrank.search import SearchClient
from twinrank.search.hits import Hit
from twinrank.ui.launch import wait_until_ready
from twinrank.ui.lookup import similar_to
from twinrank.ui.views import caption, file_name

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
WAIT_MS = 90_000  # a loaded 2-core machine; we wait for content, this is only the ceiling

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason=f"{CHROMIUM} is missing (apt-get install chromium; .ci/setup "
                              f"does it)"),
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def stop_server(process: subprocess.Popen[bytes]) -> None:
    """Stop the CLI and the Streamlit server it started: the whole process group."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            os.killpg(process.pid, 0)  # anything left in the group?
        except (subprocess.TimeoutExpired, ProcessLookupError):
            if process.poll() is not None:
                try:
                    os.killpg(process.pid, 0)
                except ProcessLookupError:
                    return


@contextlib.contextmanager
def serve(store: Path, log_path: Path) -> Iterator[str]:
    """`twinrank ui --store STORE` on a free port; yields its address, then stops it."""
    port = free_port()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "cli.py", "ui", "--store", str(store), "--port", str(port),
             "--threads", "1"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until_ready(url, process, timeout=WAIT_MS / 1000)
            yield url
        finally:
            stop_server(process)
            print(f"server log: {log_path}")


def card(page, key: str):
    """The result card ``key`` ("after-3": stage and rank) in the app's result grid.
    Playwright's CSS locators reach into the grid's shadow root."""
    return page.locator(f"[data-card='{key}']")


def card_texts(page, prefix: str, count: int) -> list[str]:
    return [card(page, f"{prefix}-{i}").locator("figcaption").text_content()
            for i in range(1, count + 1)]


def wait_for_cards(page, prefix: str, count: int) -> None:
    """Until ``count`` cards with this prefix show a fully loaded image."""
    for i in range(1, count + 1):
        image = card(page, f"{prefix}-{i}").locator("img")
        image.wait_for(timeout=WAIT_MS)
        page.wait_for_function("image => image.complete && image.naturalWidth > 0",
                               arg=image.element_handle(), timeout=WAIT_MS)


def test_query_both_columns_then_more_like_this(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    store = build_store(tmp_path / "photos", tmp_path / "store")
    before, after, similar = expected_results(store)  # before the server holds the store
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with serve(store, tmp_path / "server.log") as url, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=FLAGS,
            viewport={"width": 1400, "height": 1000})
        try:
            page = context.new_page()
            page.goto(url)
            box = page.get_by_label("What are you looking for?")
            box.wait_for(timeout=WAIT_MS)
            box.fill(QUERY)
            box.press("Enter")
            wait_for_cards(page, "before", K)
            wait_for_cards(page, "after", K)
            assert card_texts(page, "before", K) == [caption(h, "before", K) for h in before]
            assert card_texts(page, "after", K) == [caption(h, "after", K) for h in after]
            page.screenshot(path=str(ARTIFACTS / "query.png"), full_page=True)

            card(page, "after-1").get_by_role("button", name="Similar").click()
            expect(page.get_by_text(f"More like {file_name(after[0])}")).to_be_visible(
                timeout=WAIT_MS)
            wait_for_cards(page, "grid", K)
            shown = [text.rsplit(" · ", 1)[-1] for text in card_texts(page, "grid", K)]
            assert shown == [file_name(h) for h in similar]
            assert "Traceback" not in page.content()
            page.screenshot(path=str(ARTIFACTS / "more-like-this.png"), full_page=True)
        finally:
            context.close()
    print(f"screenshots: {ARTIFACTS}")


def expected_results(store: Path) -> tuple[list[Hit], list[Hit], list[Hit]]:
    """What SearchClient answers for the test's query, and the images like its top hit."""
    with SearchClient(store) as client:
        before, after = client.compare(QUERY, k=K)
        similar = similar_to(client, after[0].id, K)
    return list(before), list(after), list(similar)

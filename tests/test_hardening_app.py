"""Issue 33, the app on a network, as real processes: with ``--host 0.0.0.0`` the machine's
own interface addresses reach the app (and a foreign name still does not); in a real
Chromium, an uploaded file's name, an error and the example queries show as text, never as
Markdown, and the page loads nothing from outside the app."""

from __future__ import annotations

import ipaddress
import json
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from test_hardening_ui import http_status, ui_process, websocket_status
from test_ui import build_store

from twinrank.ui.examples import EXAMPLES_FILE
from twinrank.ui.serve import host_name
from twinrank.ui.views import markdown_safe, path_name

CHROMIUM = "/usr/bin/chromium"
WAIT_MS = 90_000  # a loaded 2-core machine: a ceiling, not a timing
HOSTILE_QUERY = "red ![tracker](http://outside.example/pixel.png) **bold** `code` $x^2$"
HOSTILE_UPLOAD = "[click](http://outside.example) **big** $y$.png"


def lan_addresses() -> list[str]:
    """This machine's non-loopback IPv4 addresses, read by another program than the app."""
    found = shutil.which("hostname")
    if found is None:
        return []
    done = subprocess.run([found, "-I"], capture_output=True, text=True, timeout=10)
    return [a for a in done.stdout.split()
            if ipaddress.ip_address(a).version == 4 and not ipaddress.ip_address(a).is_loopback]


def status_at(address: str, port: int, host_header: str) -> int:
    with socket.create_connection((address, port), timeout=10) as connection:
        connection.sendall(f"GET / HTTP/1.1\r\nHost: {host_header}\r\n"
                           f"Connection: close\r\n\r\n".encode())
        return int(connection.recv(200).split()[1])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_the_machines_own_addresses_reach_the_app_on_all_interfaces(tmp_path):
    addresses = lan_addresses()
    if not addresses:
        pytest.skip("this machine has no non-loopback IPv4 address")
    port = free_port()
    with ui_process(tmp_path, port, "--host", "0.0.0.0"):
        for address in addresses:  # as a browser on the LAN asks for http://ADDRESS:port/
            assert status_at(address, port, f"{address}:{port}") == 200, address
            assert websocket_status(port, f"{address}:{port}") == 101, address
        assert http_status(port, f"127.0.0.1:{port}") == 200
        assert status_at(addresses[0], port, f"evil.example:{port}") == 400
        assert websocket_status(port, f"evil.example:{port}") != 101
        assert http_status(port, f"10.255.255.254:{port}") == 400  # not one of ours


def test_an_ipv6_host_header_is_compared_in_its_short_form():
    assert host_name("[FD00:0:0::2]:8501") == "fd00::2"
    assert host_name("[::1]") == "::1" and host_name("LocalHost:80") == "localhost"


def test_markdown_safe_leaves_no_markup_and_path_name_keeps_backslashes():
    escaped = markdown_safe(HOSTILE_QUERY + "\n# heading :red[x] :material/home: <b>")
    for mark in "![]()*`$#:<>/":  # every one escaped: none can open markup
        assert all(escaped[i - 1] == "\\" for i, c in enumerate(escaped) if c == mark)
    assert "\n" not in escaped
    assert path_name("/photos/2021\\beach/a\\b.png") == "a\\b.png"


def shown(text: str) -> str:
    """Text as a person reads it: without the invisible word joiners that keep a bare URL
    from becoming a link."""
    return text.replace("\u2060", "")


def write_hostile_examples(store: Path) -> None:
    rows = [{"query": HOSTILE_QUERY, "image": "/nowhere/x.png", "bi_rank": 3,
             "rerank_rank": 1},
            {"query": "see :red[red] and :material/home: here", "image": "/nowhere/y.png",
             "bi_rank": 2, "rerank_rank": 1}]
    (store / EXAMPLES_FILE).write_text(json.dumps(rows))


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is missing")
def test_names_errors_and_examples_show_as_text_and_nothing_loads_from_outside(tmp_path):
    from playwright.sync_api import sync_playwright

    build_store(tmp_path / "photos", tmp_path / "store")
    write_hostile_examples(tmp_path / "store")
    port = free_port()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    outside: list[str] = []
    with ui_process(tmp_path, port), sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=flags)
        try:
            page = context.new_page()
            page.on("request", lambda request: outside.append(request.url)
                    if not request.url.startswith((f"http://127.0.0.1:{port}/",
                                                   f"ws://127.0.0.1:{port}/", "data:",
                                                   "blob:")) else None)
            answer = page.goto(f"http://127.0.0.1:{port}/")
            assert answer is not None and "content-security-policy" in answer.headers
            examples = page.locator("[data-testid='stButton'] button")
            examples.first.wait_for(timeout=WAIT_MS)
            labels = [shown(label) for label in examples.all_inner_texts()]
            assert HOSTILE_QUERY in labels, labels  # spelled out, every character
            assert any("see :red[red] and :material/home: here" in label for label in labels)
            assert page.locator("[data-testid='stButton'] button img").count() == 0
            assert page.locator("[data-testid='stButton'] button strong").count() == 0

            page.get_by_test_id("stExpander").get_by_text("Search by image").click()
            page.locator("input[type='file']").set_input_files(
                {"name": HOSTILE_UPLOAD, "mimeType": "image/png", "buffer": b"not an image"})
            alert = page.locator("[data-testid='stAlert']").filter(has_text="Cannot read image")
            alert.wait_for(timeout=WAIT_MS)
            assert HOSTILE_UPLOAD in shown(alert.inner_text())
            assert alert.locator("a, strong, .katex").count() == 0

            examples.first.click()  # the hostile query, searched: the grid still draws
            page.locator("[data-card='after-1'] img, [data-card='grid-1'] img").first \
                .wait_for(timeout=WAIT_MS)
            assert "Traceback" not in page.content()
        finally:
            context.close()
    assert outside == []


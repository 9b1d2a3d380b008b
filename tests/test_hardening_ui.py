"""Issue 17, the app's server as real processes: signals never orphan it, a busy port is
named, and a foreign ``Host`` (DNS rebinding) is refused over HTTP and WebSocket.

Each test starts ``twinrank ui`` as a user does (a real process, real signals, real
sockets); the last drives a real Chromium that resolves a foreign name to 127.0.0.1, as a
rebinding attacker's page would.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
START_S = 150  # a loaded 2-core machine: the ceiling for a server to come up, not a timing


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purpose
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.contextmanager
def ui_process(tmp_path: Path, port: int,
               *extra: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``twinrank ui`` on ``port`` (own process group, for clean-up), with ``extra``
    options; yields it and the pid of the Streamlit server it started, once that answers."""
    log = (tmp_path / "ui.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "twinrank.cli", "ui", "--store", str(tmp_path / "store"),
         "--port", str(port), *extra], stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        wait_for(lambda: b"running at" in (tmp_path / "ui.log").read_bytes()
                 or process.poll() is not None, START_S, "the app to start")
        assert process.poll() is None, (tmp_path / "ui.log").read_text()
        servers = children(process.pid)
        assert len(servers) == 1
        yield process, servers[0]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        log.close()


def http_status(port: int, host_header: str, path: str = "/") -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(f"GET {path} HTTP/1.1\r\nHost: {host_header}\r\n"
                           f"Connection: close\r\n\r\n".encode())
        return int(connection.recv(200).split()[1])


def websocket_status(port: int, host_header: str) -> int:
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(
            f"GET /_stcore/stream HTTP/1.1\r\nHost: {host_header}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n\r\n".encode())
        return int(connection.recv(200).split()[1])


def test_foreign_host_is_refused_over_http_and_websocket(tmp_path):
    port = free_port()
    with ui_process(tmp_path, port) as (_, server):
        ours = f"127.0.0.1:{port}"
        assert http_status(port, ours) == 200 and websocket_status(port, ours) == 101
        assert http_status(port, f"localhost:{port}") == 200
        rebound = f"evil.example:{port}"  # DNS rebinding: the name points at 127.0.0.1
        assert http_status(port, rebound) == 400
        assert http_status(port, rebound, "/_stcore/health") == 400
        assert websocket_status(port, rebound) != 101
        command = Path(f"/proc/{server}/cmdline").read_bytes().split(b"\0")
        assert b"--server.enableXsrfProtection" in command  # and it is "true"
        assert command[command.index(b"--server.enableXsrfProtection") + 1] == b"true"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_to_the_command_stops_the_server(tmp_path, signum):
    port = free_port()
    with ui_process(tmp_path, port) as (process, server):
        process.send_signal(signum)
        code = process.wait(timeout=60)
        wait_for(lambda: not alive(server), 30, "the Streamlit server to stop")
        assert code == 128 + signum  # the command exited through its own clean-up
        with socket.socket() as probe:  # and the port is free again
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_server_stops_even_when_the_command_is_killed_with_sigkill(tmp_path):
    with ui_process(tmp_path, free_port()) as (process, server):
        process.send_signal(signal.SIGKILL)  # no handler runs: the kernel tells the child
        process.wait(timeout=30)
        wait_for(lambda: not alive(server), 30, "the orphaned server to stop")


class _Impostor(http.server.BaseHTTPRequestHandler):
    """Another program on the port, one that even answers Streamlit's health check."""

    def do_GET(self) -> None:  # noqa: N802
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_busy_port_is_named_and_no_false_running_line(tmp_path):
    impostor = http.server.HTTPServer(("127.0.0.1", 0), _Impostor)
    port = impostor.server_address[1]
    thread = threading.Thread(target=impostor.serve_forever, daemon=True)
    thread.start()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "twinrank.cli", "ui", "--store", str(tmp_path / "store"),
             "--port", str(port)], capture_output=True, text=True, timeout=120)
    finally:
        impostor.shutdown()
    assert done.returncode == 1
    assert f"Port {port} is busy" in done.stderr and "--port" in done.stderr
    assert "running at" not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is missing")
def test_a_rebinding_page_in_a_real_browser_gets_no_app(tmp_path):
    """Chromium resolves evil.example to 127.0.0.1, as a rebinding attacker arranges: the
    page it loads from that name is refused, while the same server by its own name serves
    the app."""
    from playwright.sync_api import sync_playwright

    port = free_port()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update",
             "--host-resolver-rules=MAP evil.example 127.0.0.1"]
    with ui_process(tmp_path, port), sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=flags)
        try:
            page = context.new_page()
            answer = page.goto(f"http://evil.example:{port}/")
            assert answer is not None and answer.status == 400
            assert "Invalid host header" in page.content()
            answer = page.goto(f"http://127.0.0.1:{port}/")
            assert answer is not None and answer.status == 200
            page.wait_for_selector("[data-testid='stApp']", timeout=90_000)
        finally:
            context.close()

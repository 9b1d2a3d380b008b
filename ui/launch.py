"""Start the Streamlit app as a child process, bound to loopback unless asked otherwise.

Example:
    >>> process = start_ui(Path("~/.twinrank/photos"), port=8501)
    >>> wait_until_ready("http://127.0.0.1:8501", process)
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

APP = Path(__file__).with_name("app.py")
STORE_ENV = "TWINRANK_UI_STORE"
MAX_UPLOAD_MB = 25


class UIStartError(RuntimeError):
    """The app's server did not come up; the message says what to check."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def streamlit_command(host: str, port: int) -> list[str]:
    return [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.headless", "true",
        "--server.address", host,
        "--server.port", str(port),
        "--server.maxUploadSize", str(MAX_UPLOAD_MB),
        "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none",
        "--server.runOnSave", "false",
        "--client.showErrorDetails", "none",  # the app shows its own one-line errors
        "--client.toolbarMode", "minimal",
    ]


def start_ui(
    store: Path, host: str = "127.0.0.1", port: int = 8501, new_session: bool = False,
    threads: int | None = None,
) -> subprocess.Popen[bytes]:
    """Start the app for ``store``; returns the running process (the caller waits on it).

    ``new_session`` puts the server in its own process group, so a caller that is not a
    terminal (a test, a script) can stop it and its children together.
    """
    return subprocess.Popen(streamlit_command(host, port), env=ui_environment(store, threads),
                            start_new_session=new_session)


def ui_environment(store: Path, threads: int | None = None) -> dict[str, str]:
    """The app server's environment: the store, the project on the path and, with
    ``threads``, the CPU threads torch may use (``OMP_NUM_THREADS``, read at import)."""
    env = dict(os.environ)
    env[STORE_ENV] = str(Path(store).expanduser().resolve())
    project_root = str(APP.parent.parent)  # the app imports search/ and rerank/ from here
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [project_root, env.get("PYTHONPATH")]))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def app_url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


def wait_until_ready(
    url: str, process: subprocess.Popen[bytes] | None = None, timeout: float = 120.0
) -> None:
    """Block until the server at ``url`` answers its health check with ``ok``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise UIStartError(f"The app exited with code {process.returncode} before it was "
                               f"ready; is port {url.rsplit(':', 1)[-1]} already in use?")
        with contextlib.suppress(urllib.error.URLError, OSError):
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as answer:
                if answer.read().decode().strip() == "ok":
                    return
        time.sleep(0.2)
    raise UIStartError(f"The app at {url} did not answer within {timeout:.0f} s.")


def run_ui(
    store: Path, host: str, port: int, announce: Callable[[str], None] = print,
    threads: int | None = None,
) -> int:
    """Serve the app until Ctrl+C or until the server exits; returns its exit code."""
    process = start_ui(store, host, port, threads=threads)
    try:
        url = app_url(host, port)
        wait_until_ready(url, process)
        announce(f"twinrank is running at {url}  (Ctrl+C to stop)")
        return process.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """Stop the server: politely, then for sure."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()

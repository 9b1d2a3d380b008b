"""Start the Streamlit app as a child process, bound to loopback unless asked otherwise."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from pathlib import Path

APP = Path(__file__).with_name("app.py")
STORE_ENV = "TWINRANK_UI_STORE"


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
        "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none",
    ]


def start_ui(store: Path, host: str = "127.0.0.1", port: int = 8501) -> subprocess.Popen[bytes]:
    """Start the app for ``store``; returns the running process (the caller waits on it)."""
    env = dict(os.environ)
    env[STORE_ENV] = str(Path(store).expanduser().resolve())
    project_root = str(APP.parent.parent)  # the app imports search/ and rerank/ from here
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [project_root, env.get("PYTHONPATH")]))
    return subprocess.Popen(streamlit_command(host, port), env=env)

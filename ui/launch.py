"""Start the Streamlit app as a child process, bound to loopback unless asked otherwise.

The child never outlives the command: ``run_ui`` stops it on every exit path (Ctrl+C,
``SIGTERM``, ``SIGHUP``, an error), and on Linux the child is also told by the kernel to
stop when its parent dies (``kill -9`` included). A busy port is found before the server
starts, and readiness is only believed from the server this process started (it answers a
random token, see ``serve``), never from another program on the port. The server answers
only to the host names it was started for, so a web page cannot reach it by DNS
rebinding, and Streamlit's XSRF protection stays on.

Example:
    >>> process = start_ui(Path("~/.twinrank/photos"), port=8501)  # doctest: +SKIP
    >>> wait_until_ready("http://127.0.0.1:8501", process)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import secrets
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

from twinrank.ui.serve import HOSTS_ENV, INSTANCE_PATH, PARENT_ENV, TOKEN_ENV

APP = Path(__file__).with_name("app.py")
STORE_ENV = "TWINRANK_UI_STORE"
MAX_UPLOAD_MB = 25
HOSTS_EXTRA_ENV = "TWINRANK_UI_ALLOWED_HOSTS"  # more host names, comma-separated
STOP_SIGNALS = ("SIGTERM", "SIGHUP")
_TOKENS: dict[int, str] = {}  # pid of a started server -> the token it answers


class UIStartError(RuntimeError):
    """The app's server did not come up; the message says what to check."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_hosts(host: str) -> list[str]:
    """The host names the app answers to: loopback names for a loopback address; for
    another address also it, this machine's names and their addresses, and every address
    of its network interfaces (``interface_addresses``: a LAN address is often not what
    the host name resolves to); plus ``$TWINRANK_UI_ALLOWED_HOSTS``. Anything else is
    refused (DNS rebinding)."""
    names = ["127.0.0.1", "localhost", "::1"]
    if not is_loopback(host):
        if host not in ("0.0.0.0", "::", ""):
            names.append(host)
        for name in {socket.gethostname(), socket.getfqdn()}:
            names.append(name)
            with contextlib.suppress(OSError):
                names += [str(info[4][0]) for info in socket.getaddrinfo(name, None)]
        names += interface_addresses()
    names += [h.strip() for h in os.environ.get(HOSTS_EXTRA_ENV, "").split(",") if h.strip()]
    return list(dict.fromkeys(_canonical(n) for n in names))


def interface_addresses() -> list[str]:
    """This machine's own addresses, as a browser on the network reaches it: every IPv4
    address of every interface (Linux: ``SIOCGIFCONF``) and every IPv6 one
    (``/proc/net/if_inet6``), plus, on any system, the address of the default route.

    Example:
        >>> interface_addresses()  # doctest: +SKIP
        ['127.0.0.1', '192.168.1.20', '::1', 'fe80::1c2b:3ff:fe4d:5e6f']
    """
    found: list[str] = []
    with contextlib.suppress(OSError, ImportError, struct.error):
        found += _ipv4_interface_addresses()
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            found.append(str(ipaddress.IPv6Address(bytes.fromhex(line.split()[0]))))
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.connect(("192.0.2.1", 9))  # TEST-NET-1: picks the route, sends nothing
        found.append(str(udp.getsockname()[0]))
    return list(dict.fromkeys(a for a in found if a != "0.0.0.0"))


def _ipv4_interface_addresses() -> list[str]:
    import array
    import fcntl

    record = 40 if struct.calcsize("P") == 8 else 32  # sizeof(struct ifreq)
    buffer = array.array("B", bytes(record * 256))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        answer = fcntl.ioctl(probe.fileno(), 0x8912,  # SIOCGIFCONF
                             struct.pack("iP", len(buffer), buffer.buffer_info()[0]))
    used = struct.unpack("iP", answer)[0]
    data = buffer.tobytes()[:used]
    return [socket.inet_ntoa(data[at + 20:at + 24]) for at in range(0, used, record)]


def _canonical(name: str) -> str:
    """A host name in lower case; an IPv6 address in its short form, as browsers send it."""
    name = name.strip().lower()
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(name.split("%", 1)[0]).compressed
    return name


def streamlit_command(host: str, port: int) -> list[str]:
    hosts = [arg for name in allowed_hosts(host) for arg in ("--server.allowedHosts", name)]
    return [
        sys.executable, "-m", "twinrank.ui.serve", "run", str(APP),
        "--server.headless", "true",
        "--server.address", host,
        "--server.port", str(port),
        "--server.maxUploadSize", str(MAX_UPLOAD_MB),
        "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none",
        "--server.runOnSave", "false",
        "--client.showErrorDetails", "none",  # the app shows its own one-line errors
        "--client.toolbarMode", "minimal",
        "--server.enableXsrfProtection", "true",
        # Streamlit runs a full gc.collect() after every script run, holding the GIL
        # while it walks every object torch and open_clip created: 150-300 ms before the
        # last of an answer reaches the browser. Python's own collector still runs.
        "--runner.postScriptGC", "false",
        *hosts,
    ]


def start_ui(
    store: Path, host: str = "127.0.0.1", port: int = 8501, new_session: bool = False,
    threads: int | None = None,
) -> subprocess.Popen[bytes]:
    """Start the app for ``store``; returns the running process (the caller waits on it).

    ``new_session`` puts the server in its own process group, so a caller that is not a
    terminal (a test, a script) can stop it and its children together. Raises
    ``UIStartError`` when the port is already taken.
    """
    check_port_free(host, port)
    token = secrets.token_hex(16)
    env = ui_environment(store, threads)
    env[TOKEN_ENV] = token
    env[HOSTS_ENV] = ",".join(allowed_hosts(host))
    env[PARENT_ENV] = str(os.getpid())  # the server stops when this process dies
    process = subprocess.Popen(streamlit_command(host, port), env=env,
                               start_new_session=new_session)
    _TOKENS[process.pid] = token
    return process


def check_port_free(host: str, port: int) -> None:
    """``UIStartError`` naming the port and ``--port`` when something listens there."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
        try:
            probe.bind((host or "0.0.0.0", port))
        except OSError as error:
            if error.errno in (errno.EADDRINUSE, errno.EACCES):
                raise UIStartError(
                    f"Port {port} is busy: another program is listening on it. Pick another "
                    f"port with --port, e.g. --port {port + 1}.") from None
            raise UIStartError(f"Cannot listen on {host}:{port} ({error.strerror}).") from None



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
    """Block until the server at ``url`` is up: the one ``process`` is (it answers the
    token ``start_ui`` gave it, when the guard is installed), and healthy."""
    deadline = time.monotonic() + timeout
    token = _TOKENS.get(process.pid) if process is not None else None
    port = url.rsplit(":", 1)[-1]
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise UIStartError(f"The app exited with code {process.returncode} before it was "
                               f"ready; is port {port} already in use? Pick another with "
                               f"--port.")
        if _answers(f"{url}/_stcore/health") == "ok":
            answer = _answers(f"{url}{INSTANCE_PATH}") if token else None
            if token is None or answer == token:
                return
            if answer is not None and not answer.startswith("<"):  # another twinrank's token
                raise UIStartError(f"Another program answers at {url}, not the app this "
                                   f"command started. Pick another port with --port.")
        time.sleep(0.2)
    raise UIStartError(f"The app at {url} did not answer within {timeout:.0f} s.")


def _answers(url: str) -> str | None:
    """The text at ``url``, or None when nothing (or an error) answers."""
    with contextlib.suppress(urllib.error.URLError, OSError, UnicodeDecodeError):
        with urllib.request.urlopen(url, timeout=2) as answer:
            return str(answer.read(4096).decode().strip())
    return None


def run_ui(
    store: Path, host: str, port: int, announce: Callable[[str], None] = print,
    threads: int | None = None,
) -> int:
    """Serve the app until Ctrl+C, ``SIGTERM``/``SIGHUP`` or until the server exits;
    returns its exit code (128 + the signal's number after a signal). The server is
    stopped on every one of these paths."""
    with _signals_raise():
        process = start_ui(store, host, port, threads=threads)
        try:
            url = app_url(host, port)
            wait_until_ready(url, process)
            announce(f"twinrank is running at {url}  (Ctrl+C to stop)")
            return process.wait()
        except KeyboardInterrupt:
            return 0
        except _Stopped as stopped:
            return 128 + stopped.signum
        finally:
            stop(process)
            _TOKENS.pop(process.pid, None)


class _Stopped(Exception):  # noqa: N818  (a signal, not an error)
    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """While inside: SIGTERM and SIGHUP raise ``_Stopped``, so ``finally`` blocks run
    (Python's default for them is to exit at once, leaving the server behind)."""

    fired: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        if not fired:  # a second signal must not interrupt the clean-up the first began
            fired.append(signum)
            raise _Stopped(signum)

    previous: dict[int, object] = {}
    for name in STOP_SIGNALS:
        number = getattr(signal, name, None)
        if number is not None:
            with contextlib.suppress(ValueError):  # not the main thread: leave it alone
                previous[number] = signal.signal(number, handler)
    try:
        yield
    finally:
        for number, old in previous.items():
            signal.signal(number, old)  # type: ignore[arg-type]


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

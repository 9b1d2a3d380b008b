"""The app server's entry point: Streamlit, plus two checks Streamlit does not make itself.

``python -m twinrank.ui.serve STREAMLIT-ARGS...`` runs ``streamlit run`` with a small
middleware in front of every route (HTTP and WebSocket alike):

- **Host check.** A request whose ``Host`` header is not one of ``$TWINRANK_UI_HOSTS`` is
  refused (HTTP 400; a WebSocket is closed). This is what stops DNS rebinding: a web page
  the user visits can make ``evil.example`` resolve to 127.0.0.1, but its requests still
  say ``Host: evil.example``. Streamlit's ``server.allowedHosts`` (set too) only guards the
  WebSocket, not the page, the media files (thumbnails) or the uploads.
- **Nothing from elsewhere.** Every HTTP answer carries a Content-Security-Policy
  (``CONTENT_POLICY``): the page loads scripts, styles, images and fonts from the app
  alone (and the data: URIs it makes), and talks to no other server.
- **Identity.** ``GET /_twinrank/instance`` answers ``$TWINRANK_UI_TOKEN``, a random value
  the launcher chose, so the launcher knows the server answering on the port is the one it
  started, not another program that already had the port.

On Linux the server also stops when the launcher dies, however it dies (``stop_with_parent``).

The middleware goes in through Streamlit's Starlette app factory. Should a Streamlit
release no longer have it, the server still runs with ``server.allowedHosts`` alone and the
launcher falls back to its port check (see ``launch``).
"""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

HOSTS_ENV = "TWINRANK_UI_HOSTS"  # comma-separated host names the app answers to
TOKEN_ENV = "TWINRANK_UI_TOKEN"
PARENT_ENV = "TWINRANK_UI_PARENT"  # pid of the launcher; the server stops when it dies
INSTANCE_PATH = "/_twinrank/instance"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def host_name(header: str) -> str:
    """The host of a ``Host`` header, lower case, without port or brackets."""
    header = header.strip().lower()
    if header.startswith("["):  # [::1]:8501, in the short form the allowed list uses
        address = header[1:].split("]", 1)[0]
        try:
            return ipaddress.IPv6Address(address).compressed
        except ValueError:
            return address
    if header.count(":") == 1:
        return header.split(":", 1)[0]
    return header.rstrip(".")


class GuardMiddleware:
    """Refuse foreign ``Host`` headers; answer the launcher's identity question."""

    def __init__(self, app: ASGIApp, hosts: frozenset[str], token: str) -> None:
        self.app = app
        self.hosts = hosts
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        if "*" not in self.hosts and host_name(headers.get("host", "")) not in self.hosts:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            else:
                await _plain(send, 400, "Invalid host header")
            return
        if scope["type"] == "http" and scope.get("path") == INSTANCE_PATH and self.token:
            await _plain(send, 200, self.token)
            return
        if scope["type"] == "http":
            send = _with_policy(send)
        await self.app(scope, receive, send)


# What the page may load: only the app's own files, and the data: / blob: images and
# fonts it makes itself. Should any text reach the page as markup, a browser still fetches
# nothing from elsewhere (an image link in a query, a font, a tracker).
CONTENT_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self' 'unsafe-inline' 'unsafe-eval' blob:",  # Streamlit's inline bootstrap
    "style-src 'self' 'unsafe-inline'",  # styles its components inject
    "img-src 'self' data: blob:",
    "font-src 'self' data:",
    "media-src 'self' data: blob:",
    "connect-src 'self'",  # the app's own HTTP and WebSocket
    "worker-src 'self' blob:",
    "frame-src 'self'",
    "object-src 'none'",
    "base-uri 'self'",
    "form-action 'self'",
    "frame-ancestors 'self'",
])


def _with_policy(send: Send) -> Send:
    """``send`` that adds ``CONTENT_POLICY`` to a response's headers."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", [])
                       if k.lower() != b"content-security-policy"]
            message["headers"] = [*headers,
                                  (b"content-security-policy", CONTENT_POLICY.encode())]
        await send(message)

    return sending


async def _plain(send: Send, status: int, text: str) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def install_guard(hosts: frozenset[str], token: str) -> bool:
    """Put ``GuardMiddleware`` first in Streamlit's Starlette app; False if it cannot."""
    try:
        from starlette.middleware import Middleware
        from streamlit.web.server.starlette import starlette_app
    except ImportError:
        return False
    make = getattr(starlette_app, "create_streamlit_middleware", None)
    if make is None:
        return False

    def guarded() -> list[Any]:
        return [Middleware(GuardMiddleware, hosts=hosts, token=token), *make()]

    starlette_app.create_streamlit_middleware = guarded
    return True


def stop_with_parent(parent: int) -> None:
    """Have Linux send this process SIGTERM when ``parent`` dies (``kill -9`` included);
    exit now if it already has. Elsewhere the launcher's own signal handling is all."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            return
    if parent and os.getppid() != parent:  # the launcher died before the line above
        sys.exit(0)


def main() -> None:
    stop_with_parent(int(os.environ.get(PARENT_ENV, "0") or 0))
    hosts = frozenset(h.strip().lower() for h in os.environ.get(HOSTS_ENV, "").split(",")
                      if h.strip())
    install_guard(hosts or frozenset({"*"}), os.environ.get(TOKEN_ENV, ""))
    from streamlit.web import cli as streamlit_cli

    sys.argv = ["streamlit", *sys.argv[1:]]
    sys.exit(streamlit_cli.main())


if __name__ == "__main__":
    main()

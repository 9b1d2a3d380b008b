"""Make docs/screenshot.png: the app on the demo collection, in headless Chromium.

    python cli.py demo --home /tmp/twinrank-demo --no-ui
    python docs/make_screenshot.py --store /tmp/twinrank-demo/store

Needs Playwright (a dev dependency) and Debian's /usr/bin/chromium; downloads nothing.
"""

from __future__ import annotations

import argparse
import io
import socket
import sys
import tempfile
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).parents[1]))

from twinrank.ui.launch import start_ui, stop, wait_until_ready  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
QUERY = "a small red circle left of a large blue square"
ROWS = 3  # result rows to wait for before the picture is taken


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def capture(url: str, profile: Path) -> bytes:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=FLAGS,
            viewport={"width": 1360, "height": 1180})
        try:
            page = context.new_page()
            page.goto(url)
            box = page.get_by_label("What are you looking for?")
            box.wait_for(timeout=120_000)
            box.fill(QUERY)
            box.press("Enter")
            page.wait_for_function(
                """rows => [...Array(rows).keys()].every(i => ['before', 'after'].every(s => {
                    const img = document.querySelector(`.st-key-card-${s}-${i + 1} img`);
                    return img && img.complete && img.naturalWidth > 0; }))""",
                arg=ROWS, timeout=120_000)
            box.blur()  # no focus ring or hover highlight in the picture
            page.mouse.move(700, 5)
            return page.screenshot()
        finally:
            context.close()


def small_png(data: bytes, colours: int = 256) -> bytes:
    """The screenshot as a palette PNG: a fraction of the size, no visible loss for a UI."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    out = io.BytesIO()
    image.quantize(colors=colours, method=Image.Quantize.MEDIANCUT).save(out, "PNG", optimize=True)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("screenshot.png"))
    args = parser.parse_args()
    port = free_port()
    process = start_ui(args.store, port=port, new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(url, process)
        with tempfile.TemporaryDirectory() as profile:
            png = small_png(capture(url, Path(profile)))
    finally:
        stop(process)
    args.out.write_bytes(png)
    print(f"wrote {args.out} ({len(png) / 1000:.0f} kB)")


if __name__ == "__main__":
    main()

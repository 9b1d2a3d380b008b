"""Make docs/screenshot.png: the app on the demo collection, in headless Chromium.

    python cli.py demo --home runs/demo --no-ui
    python docs/make_screenshot.py --store runs/demo/store-busy

It clicks the demo's first example query (one the reranker fixes) and waits for both
result grids to load.

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

from twinrank.ui.examples import read_examples  # noqa: E402
from twinrank.ui.launch import start_ui, stop, wait_until_ready  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ROWS = 8  # results per column to wait for before the picture is taken


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def capture(url: str, profile: Path, query: str) -> bytes:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=FLAGS,
            viewport={"width": 1400, "height": 1000})
        try:
            page = context.new_page()
            page.goto(url)
            page.get_by_role("button", name=query).click(timeout=120_000)
            for rank in range(1, ROWS + 1):  # the grid's cards live in its shadow root
                for stage in ("before", "after"):
                    image = page.locator(f"[data-card='{stage}-{rank}'] img")
                    image.wait_for(timeout=120_000)
                    page.wait_for_function("i => i.complete && i.naturalWidth > 0",
                                           arg=image.element_handle(), timeout=120_000)
            page.mouse.move(60, 990)  # off the buttons: no tooltip in the picture
            page.wait_for_timeout(1000)
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
    examples = [e for e in read_examples(args.store) if e.fixed]
    if not examples:
        raise SystemExit(f"{args.store} has no example queries: build it with `twinrank demo`.")
    port = free_port()
    process = start_ui(args.store, port=port, new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(url, process)
        with tempfile.TemporaryDirectory() as profile:
            png = small_png(capture(url, Path(profile), examples[0].query))
    finally:
        stop(process)
    args.out.write_bytes(png)
    print(f"wrote {args.out} ({len(png) / 1000:.0f} kB)")


if __name__ == "__main__":
    main()

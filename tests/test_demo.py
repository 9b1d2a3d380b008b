"""`twinrank demo` as a new user runs it: the shipped model on generated busy scenes, and
example queries that show what the reranker is for. Then the app in a real headless
Chromium: an example clicked, the right image first after reranking and not before; a
hostile file name shown as text in Details. Screenshots go to the test's tmp folder.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from twinrank.search import SearchClient
from twinrank.ui.examples import measure, read_examples
from twinrank.ui.views import path_name

ROOT = Path(__file__).parents[1]
HOSTILE = "evil`[link](https:evil.invalid)`![img](https:evil.invalid)<b>bold :red[x] $x$.png"

pytestmark = pytest.mark.timeout(1200)  # a demo build on a loaded 2-core machine


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory) -> tuple[Path, str]:
    """`twinrank demo --no-ui` in a fresh home, as a real process; (home, its output)."""
    home = tmp_path_factory.mktemp("demo")
    done = subprocess.run([sys.executable, "cli.py", "demo", "--home", str(home), "--no-ui",
                           "--threads", "1"], cwd=ROOT, capture_output=True, text=True,
                          timeout=1100)
    assert done.returncode == 0, done.stderr[-2000:]
    return home, done.stdout


def test_demo_examples_are_fixed_by_the_reranker(demo_home):
    home, output = demo_home
    store = home / "store-busy"
    examples = read_examples(store)
    fixed = [e for e in examples if e.fixed]
    assert fixed, "the demo found no caption the reranker fixes"
    assert examples[-1].bi_rank == 1 and examples[-1].rerank_rank == 1  # one both get right
    assert "captions tried" in output  # the tally: what the reranker did to all it tried
    for example in examples:  # printed for the user, with the ranks
        assert example.query in output and path_name(example.image) in output
    with SearchClient(store) as client:  # measured again, by a fresh client
        for example in fixed:
            again = measure(client, example.query, example.image)
            assert again.rerank_rank == 1
            assert again.bi_rank is None or again.bi_rank > 1


@pytest.mark.browser
def test_app_example_click_and_hostile_name(demo_home, tmp_path):
    from playwright.sync_api import expect, sync_playwright
    from test_browser_ui import CHROMIUM, FLAGS, WAIT_MS, card, card_texts, serve, wait_for_cards

    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium; .ci/setup does it)")
    home, _ = demo_home
    store = home / "store-busy"
    example = next(e for e in read_examples(store) if e.fixed)
    hostile = add_hostile_image(home, store)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with serve(store, tmp_path / "server.log") as url, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=FLAGS,
            viewport={"width": 1400, "height": 1000})
        try:
            page = context.new_page()
            page.goto(url)
            page.get_by_role("button", name=example.query).click(timeout=WAIT_MS)
            wait_for_cards(page, "after", 8)
            wait_for_cards(page, "before", 8)
            name = path_name(example.image)
            page.screenshot(path=str(shots / "example.png"))
            assert card_texts(page, "after", 1)[0].endswith(name)
            assert not card_texts(page, "before", 1)[0].endswith(name)
            top = card(page, "after-8").locator("img").bounding_box()
            assert top is not None and top["y"] + top["height"] <= 1000  # 8 above the fold

            page.get_by_text("Search by image").click()
            page.locator("input[type='file']").set_input_files(str(hostile))
            wait_for_cards(page, "grid", 1)
            expect(card(page, "after-1")).to_have_count(0, timeout=WAIT_MS)  # old page gone
            page.screenshot(path=str(shots / "hostile-grid.png"))
            assert card_texts(page, "grid", 1)[0].endswith(HOSTILE)
            card(page, "grid-1").get_by_role("button", name="Details").click()
            dialog = page.get_by_role("dialog")
            expect(dialog.get_by_text(f"path: {hostile}", exact=True)).to_be_visible(
                timeout=WAIT_MS)
            assert dialog.locator("a").count() == 0
            assert dialog.locator("b, strong").count() == 0
            assert dialog.locator("img").count() == 1  # the preview, nothing injected
            page.screenshot(path=str(shots / "hostile-details.png"))
            assert "Traceback" not in page.content()
        finally:
            context.close()
    print(f"screenshots: {shots}")


def add_hostile_image(home: Path, store: Path) -> Path:
    """A picture with markup and backticks in its name (noise, so it never outranks a
    scene), ingested into the demo's store."""
    folder = home / "scenes-busy" / "images" / "hostile"
    folder.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / HOSTILE)
    done = subprocess.run([sys.executable, "cli.py", "ingest", str(folder.parent), "--store",
                           str(store), "--threads", "1"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return (folder / HOSTILE).resolve()

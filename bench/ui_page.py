"""What a result page costs the app: thumbnails (cached vs. made per view vs. originals) and
the sidebar's filter facets on a 100k-image collection.

    python bench/ui_page.py            # writes bench/results/ui_page.json

Baselines are measured in the same run: sending the original files (what ``st.image(path)``
would do) and resizing the originals on every view (no cache). Ratios matter, not the
absolute times: the machine is shared and noisy.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parents[1]))

from twinrank.store import CollectionInfo, PointRecord, open_store  # noqa: E402
from twinrank.ui.facets import collect_facets  # noqa: E402
from twinrank.ui.thumbs import THUMB_SIZE, ThumbnailCache, open_image  # noqa: E402

PAGE = 16  # images on one before/after page (k = 8, two columns)
PHOTO = (4000, 3000)  # a 12 MP camera JPEG
COLLECTION = 100_000
REPEATS = 3


def make_photos(folder: Path, count: int) -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:PHOTO[1], 0:PHOTO[0]]
    paths = []
    for i in range(count):
        base = (np.sin(x / (200 + 30 * i)) + np.cos(y / (150 + 20 * i))) * 60 + 128
        pixels = np.stack([base, base[::-1], base[:, ::-1]], axis=-1)
        pixels += rng.normal(0, 12, pixels.shape)
        path = folder / f"photo{i:02d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def timed(action, repeats: int = REPEATS) -> float:
    """Median milliseconds of ``action()``."""
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        runs.append((time.perf_counter() - started) * 1000)
    return statistics.median(runs)


def thumbnails(folder: Path) -> dict[str, float]:
    photos = make_photos(folder / "photos", PAGE)
    points = [(str(uuid.uuid4()), {"paths": [str(p)]}) for p in photos]
    original_bytes = sum(p.stat().st_size for p in photos)

    def resize_every_view() -> None:
        for photo in photos:
            open_image(photo).thumbnail((THUMB_SIZE, THUMB_SIZE))

    cache = ThumbnailCache(folder / "thumbs")
    started = time.perf_counter()
    made = [cache.get(point_id, payload) for point_id, payload in points]  # first view
    cold_ms = (time.perf_counter() - started) * 1000
    thumb_bytes = sum(p.stat().st_size for p in made if p)
    return {
        "original_read_ms": timed(lambda: [p.read_bytes() for p in photos]),
        "original_bytes": original_bytes,
        "resize_every_view_ms": timed(resize_every_view, 1),
        "cached_first_view_ms": cold_ms,
        "cached_later_view_ms": timed(lambda: [cache.get(i, p) for i, p in points]),
        "thumbnail_bytes": thumb_bytes,
    }


def facets(folder: Path) -> dict[str, float]:
    """The sidebar's one pass over every payload, on a 100k-point Qdrant Edge store."""
    info = CollectionInfo(model_id="bench", vector_size=16, token_count=1, token_width=8)
    store = open_store(folder / "store", info)
    rng = np.random.default_rng(1)
    for start in range(0, COLLECTION, 5000):
        store.upsert([PointRecord(
            id=str(uuid.UUID(int=i + 1)), image_vector=rng.normal(size=16).astype(np.float32),
            image_tokens=None,
            payload={"paths": [f"/photos/{2000 + i % 20}/{i % 97}/img{i}.jpg"],
                     "folders": ["/", "/photos", f"/photos/{2000 + i % 20}",
                                 f"/photos/{2000 + i % 20}/{i % 97}"],
                     "format": "jpeg" if i % 5 else "png",
                     "captured_at": f"{2000 + i % 20}-0{1 + i % 9}-1{i % 10}T10:00:00Z"})
            for i in range(start, min(start + 5000, COLLECTION))])
    started = time.perf_counter()
    found = collect_facets(store.iter_payloads())
    elapsed = (time.perf_counter() - started) * 1000
    store.close()
    return {"facets_100k_ms": elapsed, "folders": len(found.folders), "images": found.images}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        result: dict[str, Any] = {"thumbnails": thumbnails(Path(tmp)),
                                  "facets": facets(Path(tmp))}
    t = result["thumbnails"]
    result["ratios"] = {
        "bytes_originals_over_thumbnails": t["original_bytes"] / t["thumbnail_bytes"],
        "resize_every_view_over_cached_view": t["resize_every_view_ms"]
        / t["cached_later_view_ms"],
    }
    result["command"] = "python bench/ui_page.py"
    result["page_images"] = PAGE
    result["photo_size"] = list(PHOTO)
    result["machine"] = f"{platform.machine()}, shared with other work (measured under load)"
    out = Path(__file__).with_name("results") / "ui_page.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

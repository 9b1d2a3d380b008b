"""The app's parts without Streamlit: thumbnails, filter facets, metadata."""

from __future__ import annotations

import uuid
from datetime import date

import pytest
from conftest import make_image
from PIL import Image

from twinrank.store.filters import SearchFilter
from twinrank.ui.facets import FilterChoices, collect_facets
from twinrank.ui.thumbs import THUMB_SIZE, ThumbnailCache, open_image
from twinrank.ui.views import human_bytes, metadata_rows

POINT = str(uuid.uuid4())


def test_thumbnail_is_made_once_and_kept(tmp_path):
    source = make_image(tmp_path / "big.png", seed=1, size=(1200, 800))
    cache = ThumbnailCache(tmp_path / "thumbs")
    thumb = cache.get(POINT, {"paths": [str(source)]})
    assert thumb is not None and thumb.is_relative_to(tmp_path / "thumbs")
    with Image.open(thumb) as image:
        assert max(image.size) == THUMB_SIZE and image.format == "JPEG"
    source.unlink()  # the cached copy no longer needs the original
    assert cache.get(POINT, {"paths": [str(source)]}) == thumb


def test_thumbnail_uses_the_first_path_that_still_exists(tmp_path):
    second = make_image(tmp_path / "b.png", seed=2)
    cache = ThumbnailCache(tmp_path / "thumbs")
    assert cache.get(POINT, {"paths": [str(tmp_path / "gone.png"), str(second)]}) is not None
    assert cache.get(str(uuid.uuid4()), {"paths": [str(tmp_path / "gone.png")]}) is None
    assert cache.get(str(uuid.uuid4()), {}) is None


def test_thumbnail_keys_are_point_ids_only(tmp_path):
    cache = ThumbnailCache(tmp_path / "thumbs")
    source = make_image(tmp_path / "a.png", seed=3)
    with pytest.raises(ValueError):
        cache.get("../../etc/passwd", {"paths": [str(source)]})


def test_a_corrupt_file_gives_no_thumbnail(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    assert ThumbnailCache(tmp_path / "thumbs").get(POINT, {"paths": [str(broken)]}) is None


def test_unwritable_thumbs_folder_falls_back_to_a_temporary_one(tmp_path):
    blocked = tmp_path / "store" / "thumbs"
    blocked.parent.mkdir()
    blocked.write_bytes(b"")  # a file where the folder should be: cannot be created
    cache = ThumbnailCache(blocked)
    assert not cache.folder.is_relative_to(tmp_path)
    source = make_image(tmp_path / "a.png", seed=4)
    assert cache.get(POINT, {"paths": [str(source)]}) is not None


def test_open_image_reads_palette_and_rejects_junk(tmp_path):
    palette = tmp_path / "p.png"
    Image.new("P", (8, 8)).save(palette)
    assert open_image(palette).mode == "RGB"
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"nope")
    with pytest.raises(ValueError, match="junk.png"):
        open_image(junk)


def payload(path: str, fmt: str, when: str) -> dict:
    parts = path.split("/")
    folders = ["/"] + ["/".join(parts[:i]) for i in range(2, len(parts))]
    return {"paths": [path], "folders": folders, "format": fmt, "captured_at": when}


def test_facets_and_the_filters_they_make():
    facets = collect_facets(enumerate([
        payload("/home/me/photos/2021/a.png", "png", "2021-03-01T10:00:00Z"),
        payload("/home/me/photos/2022/beach/b.jpg", "jpeg", "2022-07-04T10:00:00Z"),
        payload("/home/me/photos/2022/c.jpg", "jpeg", "2022-01-02T10:00:00Z"),
    ]))
    assert facets.images == 3 and facets.root == "/home/me/photos"
    assert [f for f, _ in facets.folders] == ["/home/me/photos", "/home/me/photos/2021",
                                              "/home/me/photos/2022",
                                              "/home/me/photos/2022/beach"]
    assert facets.folder_label("/home/me/photos") == "All folders (3)"
    assert facets.folder_label("/home/me/photos/2022/beach") == "2022/beach (1)"
    assert facets.formats == ["jpeg", "png"]
    assert (facets.first_day, facets.last_day) == (date(2021, 3, 1), date(2022, 7, 4))
    # the whole range and the root folder restrict nothing
    assert facets.to_filter(FilterChoices(folder="/home/me/photos", first_day=facets.first_day,
                                          last_day=facets.last_day)) is None
    chosen = facets.to_filter(FilterChoices(folder="/home/me/photos/2022", formats=("jpeg",),
                                            first_day=date(2022, 1, 1),
                                            last_day=date(2022, 6, 30)))
    assert chosen == SearchFilter(folder="/home/me/photos/2022", after=date(2022, 1, 1),
                                  before=date(2022, 7, 1), formats=("jpeg",))


def test_empty_collection_has_no_facets():
    facets = collect_facets([])
    assert facets.images == 0 and facets.folders == [] and facets.to_filter(FilterChoices()) is None


def test_metadata_rows_name_every_path():
    rows = dict(metadata_rows({"paths": ["/a/x.jpg"], "width": 4000, "height": 3000,
                               "format": "jpeg", "size": 2_400_000,
                               "captured_at": "2021-05-03T12:00:00Z",
                               "captured_at_source": "exif"}))
    assert rows["path"] == "/a/x.jpg" and rows["size"] == "4000 × 3000 px"
    assert rows["file size"] == "2.4 MB" and rows["taken"] == "2021-05-03 12:00 UTC (from EXIF)"
    assert human_bytes(512) == "512 B"

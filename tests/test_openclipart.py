"""The Open Clip Art reader and its grouped split, on a small package tree made here in the
Debian layout (ROOT/svg/... with RDF metadata, ROOT/png/... renders, links for drawings
filed twice); one more test reads the real package when it is installed."""

from __future__ import annotations

import json
import os
from pathlib import Path
from xml.sax.saxutils import escape

import pytest
from PIL import Image

from twinrank.captions.data import load_dataset
from twinrank.captions.openclipart import (
    DEFAULT_ROOT,
    OpenClipartConfig,
    build_openclipart,
    read_clipart,
)

SVG = """<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"
     xmlns:cc="http://web.resource.org/cc/" xmlns:dc="http://purl.org/dc/elements/1.1/">
  <metadata><rdf:RDF><cc:Work rdf:about="">
    <dc:title>{title}</dc:title><dc:description>{description}</dc:description>
    <dc:subject><rdf:Bag>{keywords}</rdf:Bag></dc:subject>
    <dc:creator><cc:Agent><dc:title>{creator}</dc:title></cc:Agent></dc:creator>
  </cc:Work></rdf:RDF></metadata>
  <rect width="10" height="10"/>
</svg>
"""
FRUIT = ["apple", "pear", "plum", "cherry", "lemon", "lime", "fig", "date", "kiwi", "mango",
         "melon", "grape", "peach", "orange", "banana", "papaya", "quince", "guava"]


def add_drawing(root: Path, rel: str, title: str, description: str = "",
                keywords: tuple[str, ...] = (), creator: str = "Ann Artist",
                colour: tuple[int, int, int, int] = (200, 30, 30, 255)) -> None:
    svg = root / "svg" / f"{rel}.svg"
    svg.parent.mkdir(parents=True, exist_ok=True)
    svg.write_text(SVG.format(title=escape(title), description=escape(description),
                              keywords="".join(f"<rdf:li>{escape(k)}</rdf:li>" for k in keywords),
                              creator=escape(creator)), encoding="utf-8")
    png = root / "png" / f"{rel}.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGBA", (40, 20), (0, 0, 0, 0))  # transparent, wide
    image.paste(Image.new("RGBA", (10, 10), colour), (15, 5))
    image.save(png)


def link_drawing(root: Path, rel: str, target: str) -> None:
    """Debian files one drawing under a second folder through links."""
    for kind in ("svg", "png"):
        path = root / kind / f"{rel}.{kind}"
        path.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(root / kind / f"{target}.{kind}", path)


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("openclipart")
    for i, fruit in enumerate(FRUIT):
        add_drawing(root, f"food/fruit/{fruit}_ann_artist_01", fruit.title(),
                    f"A ripe {fruit}. Drawn for http://example.org", ("food", "hash", fruit),
                    colour=(i * 10, 100, 50, 255))
    add_drawing(root, "food/fruit/red_apple_bob_01", "Red Apple", "", ("apple",), "Bob")
    for name in ("star_kim", "star_lee"):  # two drawings, the same words
        add_drawing(root, f"shapes/{name}", "Star", "", ("star",), name[5:].title())
    add_drawing(root, "animals/bat_orlando_karam_", "bat", "", ("mammal", "bat"),
                "Orlando Karam")
    link_drawing(root, "animals/mammals/bat_orlando_karam_", "animals/bat_orlando_karam_")
    for i, colour in enumerate(["blue", "red", "green"] * 4):  # a series, one collection title
        add_drawing(root, f"shapes/jigsaw/jigsaw_{colour}_{i:02d}",
                    "Clipart by Nicu Buculei - jigsaw_red_10", "", ("jigsaw", "shape"),
                    "Nicu Buculei", colour=(i * 20, 0, 0, 255))
    return root


@pytest.fixture(scope="module")
def built(package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("built")
    build_openclipart(OpenClipartConfig(out, package, validation_fraction=0.25,
                                        test_fraction=0.25, max_per_group=5,
                                        thumbnail_size=32, workers=1))
    return out


def rows(out: Path) -> dict[str, list[dict]]:
    return {split: [json.loads(line) for line in (out / f"{split}.jsonl").read_text().splitlines()]
            for split in ("train", "val", "test")}


def test_drawings_filed_twice_are_one_record_with_both_folders(package: Path) -> None:
    items, counts = read_clipart(package)
    assert counts["svg_paths"] == len(FRUIT) + 1 + 2 + 2 + 12
    assert len(items) == len(FRUIT) + 16
    bat = next(item for item in items if item.title == "bat")
    assert bat.categories == ("animals", "animals/mammals") and bat.creator == "Orlando Karam"
    assert bat.keywords == ("mammal", "bat")


def test_captions_come_from_title_description_and_keywords(built: Path) -> None:
    records = {r["image_id"]: r for split in rows(built).values() for r in split}
    assert records["food/fruit/plum_ann_artist_01"]["captions"] == [
        "Plum", "A ripe plum. Drawn for", "Plum, food"]  # no URL, no junk keyword "hash"
    assert records["animals/bat_orlando_karam_"]["captions"] == ["bat", "mammal"]
    # a title on many pictures names a collection: the file name names the drawing
    jigsaws = [r for image_id, r in records.items() if image_id.startswith("shapes/jigsaw/")]
    assert jigsaws and all(r["captions"][0].split()[:1] == ["jigsaw"] for r in jigsaws)


def test_split_is_grouped_capped_and_readable(built: Path) -> None:
    split_rows = rows(built)
    assert all(split_rows.values()), {k: len(v) for k, v in split_rows.items()}
    side = {r["image_id"]: split for split, rs in split_rows.items() for r in rs}
    jigsaws = [i for i in side if i.startswith("shapes/jigsaw/")]
    assert len(jigsaws) == 5  # a series of 12 near-duplicates, capped at max_per_group
    assert len({side[i] for i in jigsaws}) == 1
    # similar titles ("Apple", "Red Apple") stay on one side
    assert side["food/fruit/apple_ann_artist_01"] == side["food/fruit/red_apple_bob_01"]
    captions_in: dict[str, str] = {}
    for split, rs in split_rows.items():
        for r in rs:
            for caption in r["captions"]:
                assert captions_in.setdefault(caption.lower(), split) == split, caption
    records = load_dataset(str(built / f"{side[jigsaws[0]]}.jsonl"))
    group = [r for r in records if r.image_id in jigsaws]
    assert len({r.lookalike_key for r in group}) == 1 and group[0].lookalike_key
    manifest = json.loads((built / "openclipart.json").read_text())
    assert manifest["counts"]["dropped_by_group_cap"] == 7
    assert sum(s["images"] for s in manifest["splits"].values()) == len(side)


def test_thumbnails_are_square_drawings_on_white(built: Path) -> None:
    record = load_dataset(str(built / "train.jsonl"))[0]
    with Image.open(record.image_path) as image:
        assert image.mode == "RGB" and image.size == (32, 32)
        assert image.getpixel((0, 0)) == (255, 255, 255)  # transparency composited on white


def test_the_build_is_deterministic(package: Path, built: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    build_openclipart(OpenClipartConfig(again, package, validation_fraction=0.25,
                                        test_fraction=0.25, max_per_group=5,
                                        thumbnail_size=0))
    first, second = rows(built), rows(again)
    assert {s: [r["image_id"] for r in rs] for s, rs in first.items()} == {
        s: [r["image_id"] for r in rs] for s, rs in second.items()}
    assert Path(second["train"][0]["image"]).is_file()  # thumbnail_size 0: the package's PNG


def test_identical_captions_in_a_split_are_true_of_each_other(package: Path,
                                                              tmp_path: Path) -> None:
    build_openclipart(OpenClipartConfig(tmp_path, package, 0.0, 0.0, 0, 0))
    train = {r["image_id"]: r for r in rows(tmp_path)["train"]}
    assert len(train) == len(FRUIT) + 16  # no cap, nothing held out
    assert train["shapes/star_kim"]["captions"] == ["Star"]
    assert train["shapes/jigsaw/jigsaw_blue_03"]["captions"] == [  # less its version "03"
        "jigsaw blue", "jigsaw blue, jigsaw, shape"]
    assert train["shapes/star_kim"]["also_true"] == ["shapes/star_lee"]
    assert train["shapes/jigsaw/jigsaw_blue_00"]["also_true"] == [
        "shapes/jigsaw/jigsaw_blue_03", "shapes/jigsaw/jigsaw_blue_06",
        "shapes/jigsaw/jigsaw_blue_09"]  # "jigsaw_blue_12" is named "jigsaw blue 12"
    twins = [r for r in train.values() if r["also_true"]]
    assert all(train[o]["captions"] == r["captions"] for r in twins for o in r["also_true"])


def test_a_missing_package_says_how_to_install_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="apt-get install openclipart-svg"):
        read_clipart(tmp_path)
    with pytest.raises(ValueError, match="nothing to train on"):
        build_openclipart(OpenClipartConfig(tmp_path, tmp_path, 0.6, 0.5))


@pytest.mark.skipif(not (DEFAULT_ROOT / "svg").is_dir(),
                    reason="Debian's openclipart-svg and openclipart-png are not installed")
def test_the_installed_package_reads() -> None:
    items, counts = read_clipart(DEFAULT_ROOT)
    assert counts["svg_paths"] > 8000 and len(items) > 6500
    titled = [item for item in items if item.title]
    assert len(titled) > 0.9 * len(items) and sum(bool(i.keywords) for i in items) > 6000
    cherry = [i for i in items if i.image_id.startswith("food/fruit/cherry")]
    assert cherry and all("fruit" in i.keywords for i in cherry)

"""Debian's Open Clip Art Library as a captioned image set with a grouped split.

Real drawings with names, descriptions and keywords people wrote, public domain and
installable here: ``apt-get install openclipart-svg openclipart-png`` (0.18, about 155 MB
to download, 330 MB installed). The PNG renders under ``ROOT/png`` carry no text; the SVG
sources under ``ROOT/svg`` (the same relative path, ``.svg``) each carry a Dublin Core
``<metadata>`` block: ``dc:title``, ``dc:description``, ``dc:subject``'s ``rdf:Bag`` of
keywords, ``dc:creator``. Debian files one drawing under several folders through links,
so 8,121 paths hold 7,458 distinct SVGs and 6,900 distinct PNGs: one record per PNG.

Captions (each one a query in evaluation): the picture's *name* (its title, or the words
of its file name when the title names a collection, like "Lemon SVG theme" on 416
icons), its description when it says something of its own, and its keywords. A caption
more than ``MAX_SHARED_CAPTION`` pictures carry describes none of them and is dropped (the
name always stays). The split is grouped (``captions.splits``): pictures sharing a PNG,
a name stem or a file-name stem are one group, at most ``max_per_group`` of a group are
kept, and the group's hash picks its split. docs/data.md gives the figures.

>>> report = build_openclipart(OpenClipartConfig(out=Path("data/openclipart")))  # doctest: +SKIP
>>> load_dataset("data/openclipart/test.jsonl")[0].captions  # doctest: +SKIP
('Cherry', 'food, cherry, fruit')
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from twinrank.captions.splits import check_fractions, connected_groups, split_of, stable_unit
from twinrank.models.images import MAX_PIXELS, ImageReadError, open_image

DEFAULT_ROOT = Path("/usr/share/openclipart")  # where Debian's packages install it
MANIFEST = "openclipart.json"
SPLITS = ("train", "val", "test")
GENERIC_COUNT = 10  # a title or description on this many pictures names a collection
MAX_SHARED_CAPTION = 5
JUNK_KEYWORDS = frozenset({"hash", "unsorted"})
# words that make variants of one drawing, not another drawing: ignored in group stems
VARIANT_WORDS = frozenset(
    "a an and the of with in on for by version ver alt bw black white grey gray red green "
    "blue yellow orange purple pink brown gold silver colour color colored coloured outline "
    "small big large simple icon clipart clip art svg png new old left right".split())
_DC = "{http://purl.org/dc/elements/1.1/}"
_RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
_WORK = "{http://web.resource.org/cc/}Work"
_COLLECTION_PREFIX = re.compile(r"^clip ?art by [^-]{1,40} - ", re.IGNORECASE)
_URL = re.compile(r"\S+@\S+|https?://\S+|www\.\S+")


@dataclass(frozen=True)
class ClipArt:
    """One distinct drawing: its PNG, every SVG path filed for it and their metadata."""

    image_id: str  # the PNG's path under ROOT/png, without suffix: "food/fruit/cherry_01"
    png_path: Path
    svg_names: tuple[str, ...]  # file stems of every SVG path that renders to this PNG
    categories: tuple[str, ...]  # the folders it is filed under
    title: str = ""
    description: str = ""
    keywords: tuple[str, ...] = ()
    creator: str = ""


@dataclass(frozen=True)
class OpenClipartConfig:
    """How to build the set; ``thumbnail_size`` 0 points the records at the package's PNGs
    instead of writing square thumbnails (drawing centred on white) under ``out/images``."""

    out: Path
    root: Path = DEFAULT_ROOT
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    max_per_group: int = 20  # 0: keep every picture of a group
    thumbnail_size: int = 256
    workers: int = 2


@dataclass
class OpenClipartReport:
    out: Path
    counts: dict[str, int] = field(default_factory=dict)
    splits: dict[str, dict[str, int]] = field(default_factory=dict)

    def summary(self) -> str:
        parts = ", ".join(f"{name} {s['images']} images / {s['captions']} captions / "
                          f"{s['groups']} groups" for name, s in self.splits.items())
        return f"openclipart: {parts}; written to {self.out}"


def read_svg_metadata(path: Path) -> dict[str, Any]:
    """Title, description, keywords and creator of one SVG (empty where it has none).

    Parsing stops at the end of the ``cc:Work`` element, so the drawing is never read.
    """
    try:
        for _, element in ET.iterparse(path, events=("end",)):
            if element.tag == _WORK:
                return {"title": _clean(element.findtext(_DC + "title")),
                        "description": _clean(element.findtext(_DC + "description")),
                        "keywords": [_clean(li.text) for li in element.iter(_RDF + "li")
                                     if _clean(li.text)],
                        "creator": _clean(element.findtext(f"{_DC}creator/*/{_DC}title"))}
    except ET.ParseError as error:
        raise ValueError(f"{path}: not readable SVG/XML ({error})") from None
    return {"title": "", "description": "", "keywords": [], "creator": ""}


def _clean(text: str | None) -> str:
    return " ".join((text or "").split())


def read_clipart(root: Path = DEFAULT_ROOT) -> tuple[list[ClipArt], Counter[str]]:
    """Every distinct drawing under ``root/svg`` with a PNG under ``root/png``, and counts
    of what was found and skipped. SVG paths that link to one file, or whose PNGs Debian
    linked together (identical renders), merge into one ``ClipArt``.
    """
    svg_root, png_root = Path(root) / "svg", Path(root) / "png"
    if not svg_root.is_dir():
        raise FileNotFoundError(f"no Open Clip Art SVGs under {svg_root}; install them with "
                                "`apt-get install openclipart-svg openclipart-png`, or pass "
                                "the folder that holds svg/ and png/")
    counts: Counter[str] = Counter()
    by_png: dict[str, list[Path]] = {}
    for folder, _, files in os.walk(svg_root):
        for name in sorted(files):
            if not name.endswith(".svg"):
                continue
            svg = Path(folder) / name
            counts["svg_paths"] += 1
            png = png_root / svg.relative_to(svg_root).with_suffix(".png")
            if not png.is_file():
                counts["svg_without_png"] += 1
                continue
            by_png.setdefault(os.path.realpath(png), []).append(svg)
    metadata: dict[str, dict[str, Any]] = {}
    items = []
    for png_real, svgs in sorted(by_png.items()):
        merged: dict[str, Any] = {"title": "", "description": "", "keywords": [], "creator": ""}
        for real in sorted({os.path.realpath(svg) for svg in svgs}):
            if real not in metadata:
                try:
                    metadata[real] = read_svg_metadata(Path(real))
                except ValueError:
                    counts["unreadable_svgs"] += 1
                    metadata[real] = {}
            for key, value in metadata[real].items():
                if key == "keywords":
                    merged[key] += [v for v in value if v not in merged[key]]
                elif not merged[key]:
                    merged[key] = value
        png_path = Path(png_real)
        image_id = (png_path.relative_to(os.path.realpath(png_root)).with_suffix("").as_posix()
                    if png_real.startswith(os.path.realpath(png_root)) else png_path.stem)
        items.append(ClipArt(
            image_id, png_path, tuple(sorted({svg.stem for svg in svgs})),
            tuple(sorted({svg.parent.relative_to(svg_root).as_posix() for svg in svgs})),
            merged["title"], merged["description"], tuple(merged["keywords"]),
            merged["creator"]))
    counts["distinct_svgs"] = len(metadata)
    counts["distinct_pngs"] = len(items)
    return items, counts


def file_words(stem: str, creator: str = "") -> str:
    """A file name as words, without its author's name and version numbers.

    >>> file_words("cherry_jonathan_dietrich_01", "Jonathan Dietrich")
    'cherry'
    >>> file_words("architetto_francesco_ro_01", "Architetto Francesco Rollandin")
    'architetto'
    >>> file_words("white_d_9")
    'white d 9'
    """
    words = re.findall(r"[a-z]+|\d+", stem.lower())
    author = [w for w in re.findall(r"[a-z]+", creator.lower()) if len(w) > 1]
    kept = [word for index, word in enumerate(words)
            if not (word.isdigit() and word.startswith("0"))
            and not (index and any(name.startswith(word) for name in author))]
    return " ".join(kept)


def stem_of(text: str) -> str:
    """The words that name a drawing, sorted, without variant words and plurals: the
    group key that puts "Jigsaw blue 09" and "jigsaw red 10" together.

    >>> stem_of("Jigsaw blue 09"), stem_of("jigsaw_red_10"), stem_of("Red Apples")
    ('jigsaw', 'jigsaw', 'apple')
    """
    words = [w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w
             for w in re.findall(r"[a-z]+", text.lower()) if len(w) > 1]
    named = sorted({w for w in words if w not in VARIANT_WORDS}) or sorted(set(words))
    return " ".join(named)


def _counter(values: Sequence[str]) -> Counter[str]:
    return Counter(value.lower() for value in values if value)


def picture_names(items: Sequence[ClipArt]) -> list[str]:
    """Each drawing's name: its title, unless that title names a collection (it is on
    ``GENERIC_COUNT`` or more pictures, or empty): then the words of its file name."""
    titles = [_COLLECTION_PREFIX.sub("", item.title).strip() for item in items]
    shared = _counter(titles)
    return [title if title and shared[title.lower()] < GENERIC_COUNT
            else file_words(item.svg_names[0], item.creator)
            for item, title in zip(items, titles, strict=True)]


def picture_captions(items: Sequence[ClipArt], names: Sequence[str]) -> list[tuple[str, ...]]:
    """Name, description, keywords. A description on more than ``MAX_SHARED_CAPTION``
    pictures is dropped; a keyword list that common ("icons, computer") follows the name.

    >>> art = ClipArt("food/cherry", Path("cherry.png"), ("cherry",), ("food",),
    ...               "Cherry", "A ripe cherry. http://example.org", ("food", "hash", "fruit"))
    >>> picture_captions([art], ["Cherry"])
    [('Cherry', 'A ripe cherry', 'food, fruit')]
    """
    described = _counter([item.description for item in items])
    parts: list[tuple[str, str]] = []  # (description, keyword list) of each picture
    for item, name in zip(items, names, strict=True):
        description = _URL.sub("", item.description).strip(" .,;:-")[:200]
        if described[item.description.lower()] >= GENERIC_COUNT:
            description = ""
        words = dict.fromkeys(k.replace("_", " ").strip() for k in item.keywords
                              if k.lower() not in JUNK_KEYWORDS | {name.lower()})
        parts.append((description, ", ".join(words)))
    shared = Counter(text.lower() for part in parts for text in set(part) if text)
    out = []
    for name, (description, keywords) in zip(names, parts, strict=True):
        kept = [name]
        if description and shared[description.lower()] <= MAX_SHARED_CAPTION:
            kept.append(description)
        if keywords:  # a common list ("food, fruit") says more after the name
            common = shared[keywords.lower()] > MAX_SHARED_CAPTION
            kept.append(f"{name}, {keywords}" if common and name else keywords)
        unique: dict[str, str] = {}
        for caption in kept:
            unique.setdefault(caption.lower(), caption)
        out.append(tuple(caption for caption in unique.values() if caption))
    return out


def _group_keys(item: ClipArt, name: str) -> set[str]:
    files = [file_words(svg_name, item.creator) for svg_name in item.svg_names]
    keys = {f"name:{stem_of(name) or name.lower()}"} if name else set()
    keys |= {f"file:{stem_of(words) or words}" for words in files if words}
    return keys | {f"png:{item.image_id}"}


def _fits(path: Path) -> bool:
    """Whether training and search will open it: a PNG header within ``MAX_PIXELS``."""
    try:
        with Image.open(path) as image:
            return image.width * image.height <= MAX_PIXELS
    except (OSError, Image.DecompressionBombError):
        return False


def _thumbnail(source: Path, target: Path, size: int) -> bool:
    try:
        image = open_image(source)
    except ImageReadError:
        return False
    side = max(image.size)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    target.parent.mkdir(parents=True, exist_ok=True)
    square.resize((size, size), Image.Resampling.LANCZOS).save(target)
    return True


def build_openclipart(config: OpenClipartConfig) -> OpenClipartReport:
    """Write ``train.jsonl``, ``val.jsonl``, ``test.jsonl`` (``load_dataset`` reads them),
    the thumbnails and ``openclipart.json`` (counts and rules) into ``config.out``."""
    fractions = {"test": config.test_fraction, "val": config.validation_fraction}
    check_fractions(fractions)
    items, counts = read_clipart(config.root)
    names = picture_names(items)
    captions = picture_captions(items, names)
    groups = connected_groups([_group_keys(i, n) | {f"caption:{c.lower()}" for c in cs}
                               for i, n, cs in zip(items, names, captions, strict=True)])
    members: dict[str, list[int]] = {}
    for index in sorted(range(len(items)), key=lambda i: stable_unit(items[i].image_id)):
        if captions[index]:
            members.setdefault(groups[index], []).append(index)
        else:
            counts["without_caption"] += 1
    cap = config.max_per_group or len(items)
    kept = sorted(i for group in members.values() for i in group[:cap])
    counts["dropped_by_group_cap"] = sum(max(0, len(g) - cap) for g in members.values())
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = _images(items, kept, out, config, counts)
    records: dict[str, list[dict[str, Any]]] = {name: [] for name in SPLITS}
    for index in kept:
        if index in paths:
            split = split_of(groups[index], fractions)
            records[split].append(_record(items[index], captions[index], groups[index],
                                          paths[index]))
    report = OpenClipartReport(out, dict(sorted(counts.items())))
    for split, rows in records.items():
        _mark_also_true(rows)
        (out / f"{split}.jsonl").write_text(
            "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows),
            encoding="utf-8")
        report.splits[split] = {"images": len(rows),
                                "captions": sum(len(r["captions"]) for r in rows),
                                "groups": len({r["lookalike_key"] for r in rows})}
    manifest = {"source": str(config.root), "package": _package_version(config.root),
                "config": asdict(config) | {"out": str(config.out), "root": str(config.root)},
                "counts": report.counts, "splits": report.splits,
                "rules": {"generic_count": GENERIC_COUNT,
                          "max_shared_caption": MAX_SHARED_CAPTION,
                          "split": "sha256 of the group name; docs/data.md"}}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return report


def _images(items: Sequence[ClipArt], kept: Sequence[int], out: Path,
            config: OpenClipartConfig, counts: Counter[str]) -> dict[int, str]:
    """The image path each kept picture's record names (thumbnails written here)."""
    if not config.thumbnail_size:
        readable = {i: str(items[i].png_path) for i in kept if _fits(items[i].png_path)}
        counts["unreadable_pngs"] = len(kept) - len(readable)
        return readable
    targets = {i: Path("images") / f"{items[i].image_id}.png" for i in kept}
    with ThreadPoolExecutor(max_workers=max(1, config.workers)) as pool:
        done = list(pool.map(lambda i: _thumbnail(items[i].png_path, out / targets[i],
                                                  config.thumbnail_size), kept))
    counts["unreadable_pngs"] = done.count(False)
    return {i: targets[i].as_posix() for i, ok in zip(kept, done, strict=True) if ok}


def _record(item: ClipArt, captions: tuple[str, ...], group: str, image: str) -> dict[str, Any]:
    return {"image": image, "captions": list(captions), "image_id": item.image_id,
            "language": "en", "lookalike_key": group, "title": item.title,
            "keywords": list(item.keywords), "categories": list(item.categories)}


def _mark_also_true(rows: list[dict[str, Any]]) -> None:
    """Pictures of one split with the same captions are right answers to each other's."""
    same: dict[tuple[str, ...], list[str]] = {}
    for row in rows:
        same.setdefault(tuple(c.lower() for c in row["captions"]), []).append(row["image_id"])
    for row in rows:
        others = same[tuple(c.lower() for c in row["captions"])]
        row["also_true"] = [other for other in others if other != row["image_id"]]


def _package_version(root: Path) -> str:
    changelog = Path(root).parent / "doc" / "openclipart-svg" / "changelog.Debian.gz"
    try:
        with gzip.open(changelog, "rt", encoding="utf-8") as file:
            match = re.search(r"\(([^)]+)\)", file.readline())
    except OSError:
        return ""
    return match.group(1) if match else ""


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m twinrank.captions.openclipart --out data/openclipart``"""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--validation-fraction", type=float, default=0.1)
    parser.add_argument("--test-fraction", type=float, default=0.1)
    parser.add_argument("--max-per-group", type=int, default=20)
    parser.add_argument("--thumbnail-size", type=int, default=256)
    args = parser.parse_args(argv)
    print(build_openclipart(OpenClipartConfig(
        args.out, args.root, args.validation_fraction, args.test_fraction,
        args.max_per_group, args.thumbnail_size)).summary())


if __name__ == "__main__":
    main()


__all__ = ["ClipArt", "DEFAULT_ROOT", "OpenClipartConfig", "OpenClipartReport",
           "build_openclipart", "file_words", "picture_captions", "picture_names",
           "read_clipart", "read_svg_metadata", "stem_of"]

"""Dataset readers on tiny files in the real formats: JSONL, Karpathy COCO/Flickr30k, Multi30k."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from twinrank.captions.data import (
    CaptionedImage,
    CaptionPairs,
    flatten_captions,
    load_dataset,
    read_captions_jsonl,
    read_karpathy,
    read_multi30k,
)


def _sentences(*raws: str) -> list[dict[str, object]]:
    return [{"tokens": raw.lower().split(), "raw": raw, "imgid": 0, "sentid": i}
            for i, raw in enumerate(raws)]


@pytest.fixture()
def coco_json(tmp_path: Path) -> Path:
    images = [
        {"filepath": "val2014", "filename": "COCO_val2014_000000391895.jpg", "imgid": 0,
         "split": "test", "cocoid": 391895,
         "sentences": _sentences("A man riding a motorcycle.", " A biker on a dirt road. ")},
        {"filepath": "train2014", "filename": "COCO_train2014_000000000009.jpg", "imgid": 1,
         "split": "train", "cocoid": 9, "sentences": _sentences("Food in a bento box.")},
        {"filepath": "val2014", "filename": "COCO_val2014_000000000042.jpg", "imgid": 2,
         "split": "restval", "cocoid": 42, "sentences": _sentences("A dog on a couch.")},
        {"filepath": "val2014", "filename": "COCO_val2014_000000000073.jpg", "imgid": 3,
         "split": "val", "cocoid": 73, "sentences": _sentences("A red bus.")},
    ]
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    return path


@pytest.fixture()
def flickr_json(tmp_path: Path) -> Path:
    images = [
        {"filename": "1000092795.jpg", "imgid": 0, "split": "test",
         "sentences": _sentences("Two young guys with shaggy hair.", "Two men in green shirts.")},
        {"filename": "10002456.jpg", "imgid": 1, "split": "train",
         "sentences": _sentences("Several men in hard hats.")},
    ]
    path = tmp_path / "dataset_flickr30k.json"
    path.write_text(json.dumps({"images": images, "dataset": "flickr30k"}))
    return path


@pytest.fixture()
def multi30k(tmp_path: Path) -> tuple[Path, Path, Path]:
    image_list = tmp_path / "test_2016_flickr.txt"
    image_list.write_text("1000092795.jpg\n10002456.jpg\n1000092795.jpg\n")
    first = tmp_path / "test_2016_flickr.de"
    first.write_text("Zwei junge Männer.\r\nMehrere Männer mit Helmen.\r\nZwei Männer im Freien.\n",
                     encoding="utf-8")
    second = tmp_path / "test_2016_flickr.2.de"
    second.write_text("Zwei Kerle.\nArbeiter.\nZwei Freunde.\n", encoding="utf-8")
    return image_list, first, second


def test_karpathy_coco_uses_filepath_and_cocoid(coco_json: Path, tmp_path: Path) -> None:
    [record] = read_karpathy(coco_json, tmp_path / "coco", "test")
    assert record == CaptionedImage(
        tmp_path / "coco" / "val2014" / "COCO_val2014_000000391895.jpg",
        ("A man riding a motorcycle.", "A biker on a dirt road."), "en", "391895")


def test_karpathy_train_includes_restval_unless_asked_not_to(coco_json: Path) -> None:
    with_restval = read_karpathy(coco_json, Path("coco"), "train")
    assert [r.image_id for r in with_restval] == ["9", "42"]
    without = read_karpathy(coco_json, Path("coco"), "train", include_restval=False)
    assert [r.image_id for r in without] == ["9"]
    assert [r.image_id for r in read_karpathy(coco_json, Path("coco"), "val")] == ["73"]


def test_karpathy_flickr_has_no_filepath(flickr_json: Path) -> None:
    [record] = read_karpathy(flickr_json, Path("flickr30k-images"), "test")
    assert record.image_path == Path("flickr30k-images/1000092795.jpg")
    assert record.captions == ("Two young guys with shaggy hair.", "Two men in green shirts.")
    assert record.image_id == "0"


def test_karpathy_errors_name_the_problem(tmp_path: Path, coco_json: Path) -> None:
    with pytest.raises(ValueError, match="'testing'.*restval"):
        read_karpathy(coco_json, tmp_path, "testing")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        read_karpathy(tmp_path / "missing.json", tmp_path, "test")
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"images": [{"filename": "a.jpg", "split": "test"}]}))
    with pytest.raises(ValueError, match=r"broken.json: images\[0\]: 'sentences'"):
        read_karpathy(broken, tmp_path, "test")


def test_multi30k_groups_lines_of_one_image(multi30k: tuple[Path, Path, Path]) -> None:
    image_list, first, second = multi30k
    records = read_multi30k(image_list, first, Path("flickr30k"), "de")
    assert [r.image_id for r in records] == ["1000092795.jpg", "10002456.jpg"]
    assert records[0].captions == ("Zwei junge Männer.", "Zwei Männer im Freien.")
    assert records[0].image_path == Path("flickr30k/1000092795.jpg")
    assert all(r.language == "de" for r in records)
    both = read_multi30k(image_list, [first, second], Path("flickr30k"), "de")
    assert both[1].captions == ("Mehrere Männer mit Helmen.", "Arbeiter.")


def test_multi30k_misaligned_or_empty_lines_fail(multi30k: tuple[Path, Path, Path]) -> None:
    image_list, first, _ = multi30k
    short = first.with_name("short.de")
    short.write_text("Nur eine Zeile.\n", encoding="utf-8")
    with pytest.raises(ValueError, match="short.de has 1 lines.*has 3"):
        read_multi30k(image_list, short, Path("."), "de")
    gap = first.with_name("gap.de")
    gap.write_text("Eins.\n\nDrei.\n", encoding="utf-8")
    with pytest.raises(ValueError, match="gap.de:2: empty caption"):
        read_multi30k(image_list, gap, Path("."), "de")


def test_jsonl_resolves_paths_and_merges_lines(tmp_path: Path) -> None:
    path = tmp_path / "data" / "pairs.jsonl"
    path.parent.mkdir()
    lines = [{"image": "a.png", "captions": ["one", "two"]},
             {"image": "b.png", "caption": "drei", "language": "de", "image_id": "b"},
             {"image": "a.png", "caption": "three"},
             {"image": "/abs/c.png", "captions": ["four"], "extra": 1}]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    records = read_captions_jsonl(path)
    assert records[0] == CaptionedImage(path.parent / "a.png", ("one", "two", "three"), "en",
                                        "a.png")
    assert records[1] == CaptionedImage(path.parent / "b.png", ("drei",), "de", "b")
    assert records[2].image_path == Path("/abs/c.png")
    assert read_captions_jsonl(path, root=tmp_path)[0].image_path == tmp_path / "a.png"


@pytest.mark.parametrize(("line", "message"), [
    ("{not json", "not valid JSON"),
    ('["a.png"]', "expected a JSON object"),
    ('{"captions": ["x"]}', "'image'"),
    ('{"image": "a.png"}', "'captions'"),
    ('{"image": "a.png", "captions": ["ok", ""]}', "non-empty string"),
    ('{"image": "a.png", "captions": ["ok"], "also_true": "b.png"}', "'also_true'"),
])
def test_jsonl_errors_give_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"image": "fine.png", "caption": "fine"}\n' + line + "\n")
    with pytest.raises(ValueError, match=rf"bad.jsonl:2: .*{message}"):
        read_captions_jsonl(path)


def test_load_dataset_accepts_every_form(coco_json: Path, multi30k: tuple[Path, Path, Path],
                                         tmp_path: Path) -> None:
    assert len(load_dataset(f"karpathy:{coco_json}:{tmp_path}:train")) == 2
    image_list, first, second = multi30k
    records = load_dataset(f"multi30k:{image_list}:{first},{second}:{tmp_path}:de")
    assert len(records[0].captions) == 4
    (tmp_path / "test.fr.jsonl").write_text('{"image": "x.png", "caption": "un cercle"}\n')
    assert load_dataset(f"scenes:{tmp_path}:test:fr")[0].captions == ("un cercle",)
    assert load_dataset(str(tmp_path / "test.fr.jsonl"))[0].image_id == "x.png"


def test_load_dataset_errors_are_clear(tmp_path: Path, coco_json: Path) -> None:
    with pytest.raises(ValueError, match="(?s)accepted forms:.*karpathy:DATASET_JSON"):
        load_dataset("coco_test")
    with pytest.raises(ValueError, match="accepted forms"):
        load_dataset(f"karpathy:{coco_json}:test")
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        load_dataset(str(tmp_path / "nowhere.jsonl"))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="holds no images"):
        load_dataset(str(tmp_path / "empty.jsonl"))


def test_caption_pairs_draw_one_caption_per_image_per_epoch() -> None:
    records = [CaptionedImage(Path(f"{i}.png"), tuple(f"{i}-{j}" for j in range(5)))
               for i in range(50)]
    pairs = CaptionPairs(records, seed=7)
    first = list(pairs)
    assert [path for path, _ in first] == [r.image_path for r in records]
    assert all(caption.startswith(f"{path.stem}-") for path, caption in first)
    assert first == list(CaptionPairs(records, seed=7))
    pairs.set_epoch(1)
    assert list(pairs) != first
    pairs.set_epoch(0)
    assert list(pairs) == first
    seen = set()
    for epoch in range(20):
        pairs.set_epoch(epoch)
        seen.add(pairs[0][1])
    assert seen == set(records[0].captions)
    with pytest.raises(ValueError, match="no captions"):
        CaptionPairs([CaptionedImage(Path("x.png"), ())])


def test_flatten_captions_points_each_caption_at_its_image() -> None:
    records = [CaptionedImage(Path("a.png"), ("x", "y")), CaptionedImage(Path("b.png"), ("z",))]
    assert flatten_captions(records) == (["x", "y", "z"], [0, 0, 1])

"""Caption dataset readers shared by training and evaluation.

Every supported format (our JSONL, the Karpathy splits of MSCOCO and Flickr30k, Multi30k's
line-aligned files, the synthetic scenes) becomes a list of ``CaptionedImage``, so training,
evaluation and the CLI never look at a format again. Bad input fails here, early, with the
file and line that is wrong, not as a KeyError three stages later.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

KARPATHY_SPLITS = ("train", "val", "test", "restval")
ACCEPTED_SPECS = (
    "PATH.jsonl",
    "scenes:SCENES_DIR:SPLIT[:LANG]",
    "karpathy:DATASET_JSON:IMAGE_ROOT:SPLIT",
    "multi30k:IMAGE_LIST:CAPTIONS[,CAPTIONS...]:IMAGE_ROOT:LANG",
)


@dataclass(frozen=True)
class CaptionedImage:
    """One image with every caption it has in one language.

    ``lookalike_key`` is shared by images that differ only in binding or order (the scenes'
    swapped colours, sizes and positions); training batches such images together so the
    hard negatives it mines are the confusions that matter. Empty when unknown.

    ``also_true`` names (by ``image_id``) the other images these captions are just as true
    of; ``twinrank evaluate --positives all-true`` counts them as right answers too.
    """

    image_path: Path
    captions: tuple[str, ...]
    language: str = "en"
    image_id: str = ""
    lookalike_key: str = ""
    also_true: tuple[str, ...] = ()


def _read_text(path: Path, what: str) -> str:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None


def _read_lines(path: Path, what: str) -> list[str]:
    """Lines without their endings; only the final newline is dropped, so alignment holds."""
    lines = [line.rstrip("\r") for line in _read_text(path, what).split("\n")]
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _jsonl_captions(row: dict[str, Any], where: str) -> list[str]:
    if "captions" in row:
        captions = row["captions"]
        if not isinstance(captions, list) or not captions:
            raise ValueError(f"{where}: 'captions' must be a non-empty list of strings")
    elif "caption" in row:
        captions = [row["caption"]]
    else:
        raise ValueError(f"{where}: needs 'captions' (a list) or 'caption' (a string)")
    if not all(isinstance(c, str) and c.strip() for c in captions):
        raise ValueError(f"{where}: every caption must be a non-empty string")
    return [c.strip() for c in captions]


def read_captions_jsonl(path: Path, root: Path | None = None,
                        default_language: str = "en") -> list[CaptionedImage]:
    """Read ``{"image": ..., "captions": [...]}`` lines; lines of the same image merge.

    Relative image paths resolve against ``root``, else against the file's own folder, so a
    dataset folder can move as a whole. A line may carry ``"caption"`` (one string) instead
    of ``"captions"``, plus ``"language"``, ``"image_id"``, ``"also_true"`` (image ids of
    other images the captions are true of) and ``"lookalike_key"`` (shared by near-duplicates:
    a scene's ``"scene"`` gives it too); other keys are ignored.

    >>> records = read_captions_jsonl(Path("data/scenes/test.de.jsonl"))  # doctest: +SKIP
    >>> records[0].captions[0]  # doctest: +SKIP
    'ein kleiner roter Kreis links von einem großen blauen Quadrat'
    """
    path = Path(path)
    base = Path(root) if root is not None else path.parent
    merged: dict[tuple[str, str], tuple[str, list[str]]] = {}
    keys: dict[tuple[str, str], str] = {}
    also_true: dict[tuple[str, str], list[str]] = {}
    for lineno, line in enumerate(_read_lines(path, "captions file"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: not valid JSON ({error.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
        image, language = row.get("image"), row.get("language", default_language)
        if not isinstance(image, str) or not image:
            raise ValueError(f"{where}: 'image' must be a non-empty path string")
        if not isinstance(language, str) or not language:
            raise ValueError(f"{where}: 'language' must be a non-empty string")
        captions = _jsonl_captions(row, where)
        image_id = str(row.get("image_id", row.get("id", image)))
        merged.setdefault((image, language), (image_id, []))[1].extend(captions)
        if isinstance(row.get("scene"), dict):
            keys[(image, language)] = scene_lookalike_key(row["scene"])
        elif isinstance(row.get("lookalike_key"), str):
            keys[(image, language)] = row["lookalike_key"]
        others = row.get("also_true", [])
        if not isinstance(others, list) or not all(isinstance(o, str) for o in others):
            raise ValueError(f"{where}: 'also_true' must be a list of image id strings")
        also_true.setdefault((image, language), []).extend(others)
    return [CaptionedImage(base / image, tuple(captions), language, image_id,
                           keys.get((image, language), ""),
                           tuple(dict.fromkeys(also_true.get((image, language), []))))
            for (image, language), (image_id, captions) in merged.items()]


def scene_lookalike_key(scene: dict[str, Any]) -> str:
    """The scene's bag of words: relation plus sorted shapes, colours and sizes of all its
    objects, unnamed extras included.

    Swapping colours, sizes or positions keeps it, so every look-alike shares it.

    >>> scene_lookalike_key({"relation": "above", "objects": [
    ...     {"shape": "star", "colour": "red", "size": "small"},
    ...     {"shape": "circle", "colour": "blue", "size": "small"}]})
    'above|circle,star|blue,red|small,small'
    """
    objects = list(scene.get("objects") or []) + list(scene.get("extras") or [])
    parts = [sorted(str(obj.get(attr, "")) for obj in objects)
             for attr in ("shape", "colour", "size")]
    return "|".join([str(scene.get("relation", ""))] + [",".join(part) for part in parts])


def _karpathy_record(entry: dict[str, Any], image_root: Path, where: str) -> CaptionedImage:
    if not isinstance(entry.get("filename"), str) or not entry["filename"]:
        raise ValueError(f"{where}: needs a 'filename' string")
    sentences = entry.get("sentences")
    if not isinstance(sentences, list) or not sentences:
        raise ValueError(f"{where}: 'sentences' must be a non-empty list")
    captions: list[str] = []
    for sentence in sentences:
        raw = sentence.get("raw") if isinstance(sentence, dict) else None
        if raw is None and isinstance(sentence, dict) and isinstance(sentence.get("tokens"), list):
            raw = " ".join(str(token) for token in sentence["tokens"])
        if not isinstance(raw, str) or not raw.strip():
            raise ValueError(f"{where}: every sentence needs a non-empty 'raw' string")
        captions.append(raw.strip())
    folder = image_root / entry["filepath"] if entry.get("filepath") else image_root
    image_id = entry.get("cocoid", entry.get("imgid", entry["filename"]))
    return CaptionedImage(folder / entry["filename"], tuple(captions), "en", str(image_id))


def read_karpathy(json_path: Path, image_root: Path, split: str,
                  include_restval: bool = True) -> list[CaptionedImage]:
    """Read one split of a Karpathy ``dataset_coco.json`` / ``dataset_flickr30k.json``.

    COCO entries carry ``filepath`` (``val2014``), Flickr30k entries do not; images resolve
    to ``image_root/filepath/filename`` or ``image_root/filename``. The usual COCO training
    set is ``train`` plus ``restval``, which is what ``include_restval`` gives.

    >>> test = read_karpathy(Path("dataset_coco.json"), Path("coco"), "test")  # doctest: +SKIP
    >>> len(test), len(test[0].captions)  # doctest: +SKIP
    (5000, 5)
    """
    if split not in KARPATHY_SPLITS:
        raise ValueError(f"unknown Karpathy split {split!r}; expected one of {KARPATHY_SPLITS}")
    json_path, image_root = Path(json_path), Path(image_root)
    try:
        data = json.loads(_read_text(json_path, "Karpathy split file"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{json_path}:{error.lineno}: not valid JSON ({error.msg})") from None
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise ValueError(f"{json_path}: expected an object with an 'images' list "
                         "(the Karpathy split format)")
    wanted = {split, "restval"} if split == "train" and include_restval else {split}
    records: list[CaptionedImage] = []
    for index, entry in enumerate(images):
        where = f"{json_path}: images[{index}]"
        if not isinstance(entry, dict) or entry.get("split") not in KARPATHY_SPLITS:
            raise ValueError(f"{where}: needs a 'split' in {KARPATHY_SPLITS}")
        if entry["split"] in wanted:
            records.append(_karpathy_record(entry, image_root, where))
    return records


def read_multi30k(image_list: Path, captions_file: Path | Sequence[Path], image_root: Path,
                  language: str) -> list[CaptionedImage]:
    """Read Multi30k: an image list and caption files with one line per image.

    Several caption files (task 2's ``train.1.de`` .. ``train.5.de``) may be given, each
    aligned with the image list; lines naming the same image merge into one record.

    >>> records = read_multi30k(Path("image_splits/test_2016_flickr.txt"),
    ...                         Path("raw/test_2016_flickr.de"), Path("flickr30k"),
    ...                         "de")  # doctest: +SKIP
    >>> records[0].language  # doctest: +SKIP
    'de'
    """
    image_list, image_root = Path(image_list), Path(image_root)
    names = _read_lines(image_list, "Multi30k image list")
    files = [captions_file] if isinstance(captions_file, str | Path) else list(captions_file)
    merged: dict[str, list[str]] = {}
    for caption_path in map(Path, files):
        captions = _read_lines(caption_path, "Multi30k captions file")
        if len(captions) != len(names):
            raise ValueError(f"{caption_path} has {len(captions)} lines but {image_list} has "
                             f"{len(names)}; Multi30k files must be line-aligned")
        for lineno, (name, caption) in enumerate(zip(names, captions, strict=True), start=1):
            if not name.strip():
                raise ValueError(f"{image_list}:{lineno}: empty image name")
            if not caption.strip():
                raise ValueError(f"{caption_path}:{lineno}: empty caption")
            merged.setdefault(name.strip(), []).append(caption.strip())
    return [CaptionedImage(image_root / name, tuple(captions), language, name)
            for name, captions in merged.items()]


def _spec_parts(spec: str, rest: str, counts: tuple[int, ...]) -> list[str]:
    parts = rest.split(":")
    if len(parts) not in counts or not all(parts):
        raise ValueError(_spec_error(spec))
    return parts


def _spec_error(spec: str) -> str:
    forms = "\n  ".join(ACCEPTED_SPECS)
    return f"cannot read dataset {spec!r}; accepted forms:\n  {forms}"


def load_dataset(spec: str) -> list[CaptionedImage]:
    """Read a dataset named by one string, the form the CLI takes.

    >>> coco_test = load_dataset("karpathy:dataset_coco.json:coco:test")  # doctest: +SKIP
    >>> m30k = "multi30k:test_2016_flickr.txt:test_2016_flickr.de:flickr30k:de"
    >>> multi30k_de = load_dataset(m30k)  # doctest: +SKIP
    >>> scenes_fr = load_dataset("scenes:data/scenes:zeroshot:fr")  # doctest: +SKIP
    """
    kind, _, rest = spec.partition(":")
    if kind == "karpathy":
        json_path, image_root, split = _spec_parts(spec, rest, (3,))
        records = read_karpathy(Path(json_path), Path(image_root), split)
    elif kind == "multi30k":
        image_list, captions, image_root, language = _spec_parts(spec, rest, (4,))
        files = [Path(name) for name in captions.split(",")]
        records = read_multi30k(Path(image_list), files, Path(image_root), language)
    elif kind == "scenes":
        folder, *split_language = _spec_parts(spec, rest, (2, 3))
        records = read_captions_jsonl(Path(folder) / (".".join(split_language) + ".jsonl"))
    elif spec.endswith(".jsonl"):
        records = read_captions_jsonl(Path(spec))
    else:
        raise ValueError(_spec_error(spec))
    if not records:
        raise ValueError(f"dataset {spec!r} holds no images")
    return records


def flatten_captions(records: Sequence[CaptionedImage]) -> tuple[list[str], list[int]]:
    """Every caption as a query, with the index of the record it describes.

    Text-to-image recall needs each caption once, paired with its one correct image.

    >>> flatten_captions([CaptionedImage(Path("a.png"), ("x", "y")),
    ...                   CaptionedImage(Path("b.png"), ("z",))])
    (['x', 'y', 'z'], [0, 0, 1])
    """
    captions = [caption for record in records for caption in record.captions]
    owners = [index for index, record in enumerate(records) for _ in record.captions]
    return captions, owners


class CaptionPairs:
    """``(image_path, caption)`` pairs, one caption per image, redrawn each epoch.

    Contrastive training wants every image once per epoch and every caption over time.
    Len and indexing make it a map-style dataset that torch's DataLoader takes as is; call
    ``set_epoch`` before each epoch (the choice depends only on ``seed`` and the epoch).

    >>> pairs = CaptionPairs([CaptionedImage(Path("a.png"), ("x", "y"))], seed=0)
    >>> pairs[0][0], pairs[0][1] in ("x", "y")
    (PosixPath('a.png'), True)
    """

    def __init__(self, records: Sequence[CaptionedImage], seed: int = 0) -> None:
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        for record in records:
            if not record.captions:
                raise ValueError(f"{record.image_path} has no captions to train on")
        self.records = tuple(records)
        self.seed = seed
        self._counts = np.array([len(record.captions) for record in self.records])
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        rng = np.random.default_rng([self.seed, epoch])
        self.epoch = epoch
        self._choice = (rng.random(len(self._counts)) * self._counts).astype(np.int64)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[Path, str]:
        record = self.records[index]
        return record.image_path, record.captions[int(self._choice[index])]

    def __iter__(self) -> Iterator[tuple[Path, str]]:
        return (self[index] for index in range(len(self)))

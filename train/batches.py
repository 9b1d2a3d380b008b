"""Training batches: images decoded once, captions redrawn, look-alikes side by side.

A ``TrainingSet`` merges caption records of the same image (the scenes ship one file per
language for the same pictures), so one picture is one row with every caption it has in
every language. Images are decoded and preprocessed once into one tensor: the scenes are
tiny, and decoding PNGs every epoch would cost more than the model on a CPU.

Each epoch's order depends only on ``(seed, epoch)``, so a resumed run sees exactly the
batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from twinrank.captions.data import CaptionedImage
from twinrank.models.images import ImageReadError, open_image

Preprocess = Callable[[Image.Image], torch.Tensor]


@dataclass(frozen=True)
class TrainBatch:
    """One batch: pixels (B, 3, H, W), captions (B,), and which picture each row shows.

    ``image_ids`` tell the losses which rows are positives of each other: images that share
    a caption (views of one scene, or two photos with one stock caption) get one id, so
    neither is taken as the other's negative. ``positives`` adds the captions the data lists
    as true of other images (``also_true``): never a negative of those either.
    """

    pixels: torch.Tensor
    captions: list[str]
    image_ids: torch.Tensor  # (B,) the TrainingSet's ``same_as`` of each row's image
    positives: torch.Tensor | None = None  # (B, B) image x caption: True where it holds


class TrainingSet:
    """Unique images with all their captions, and the batches of each epoch.

    Example:
        >>> data = TrainingSet(load_dataset("scenes:data/scenes:train"),  # doctest: +SKIP
        ...                    model.preprocess)
        >>> batch = data.batch(epoch=0, index=0, batch_size=64)  # doctest: +SKIP
    """

    def __init__(self, records: Sequence[CaptionedImage], preprocess: Preprocess,
                 seed: int = 0, group_lookalikes: bool = True, also_true: bool = True) -> None:
        if not records:
            raise ValueError("the training data holds no images; check the --data specs")
        merged: dict[Path, tuple[list[str], str]] = {}
        for record in records:
            captions, key = merged.setdefault(Path(record.image_path), ([], ""))
            captions.extend(record.captions)
            if record.lookalike_key and not key:
                merged[Path(record.image_path)] = (captions, record.lookalike_key)
        self.paths = list(merged)
        self.captions = [tuple(captions) for captions, _ in merged.values()]
        self.lookalike_keys = [key for _, key in merged.values()]
        if any(not captions for captions in self.captions):
            raise ValueError("every training image needs at least one caption")
        self.same_as = shared_caption_ids(self.captions)
        self.true_of = also_true_rows(records, self.paths) if also_true else {}
        self.seed = seed
        self.group_lookalikes = group_lookalikes and any(self.lookalike_keys)
        self.pixels = decode_all(self.paths, preprocess)  # (N, 3, H, W) fp16
        self._orders: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def batches_per_epoch(self, batch_size: int) -> int:
        return max(1, len(self) // batch_size)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Image indices in this epoch's order: shuffled look-alike groups, kept together."""
        if epoch not in self._orders:
            self._orders = {epoch: self._shuffle(epoch)}
        return self._orders[epoch]

    def _shuffle(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch, 0])
        if not self.group_lookalikes:
            return rng.permutation(len(self))
        groups: dict[str, list[int]] = {}
        for index, key in enumerate(self.lookalike_keys):
            groups.setdefault(key or f"#{index}", []).append(index)
        members = list(groups.values())
        order: list[int] = []
        for group in rng.permutation(len(members)):
            order.extend(int(i) for i in rng.permutation(members[int(group)]))
        return np.asarray(order)

    def batch(self, epoch: int, index: int, batch_size: int) -> TrainBatch:
        """Batch ``index`` of ``epoch``; every image gets one caption, drawn anew each epoch."""
        order = self.epoch_order(epoch)
        if len(order) < batch_size:
            rows = order
        else:
            rows = order[index * batch_size : (index + 1) * batch_size]
        rng = np.random.default_rng([self.seed, epoch, 1])
        picks = rng.random(len(self))  # one draw per image and epoch
        captions = [self.captions[i][int(picks[i] * len(self.captions[i]))] for i in rows]
        pixels = self.pixels[torch.as_tensor(rows, dtype=torch.long)].float()
        ids = torch.as_tensor(self.same_as[rows])
        positives = None
        if self.true_of:
            positives = ids[:, None] == ids[None, :]
            where = {int(row): position for position, row in enumerate(rows)}
            for column, row in enumerate(rows):
                for image in self.true_of.get(int(row), ()):
                    if image in where:
                        positives[where[image], column] = True
        return TrainBatch(pixels, captions, ids, positives)


def also_true_rows(records: Sequence[CaptionedImage], paths: Sequence[Path]) -> dict[int, set[int]]:
    """For each image row (index into ``paths``), the rows its captions are also true of,
    from the records' ``also_true`` image ids; empty when the data lists none.

    >>> records = [CaptionedImage(Path("a.png"), ("x",), image_id="a", also_true=("b",)),
    ...            CaptionedImage(Path("b.png"), ("y",), image_id="b")]
    >>> also_true_rows(records, [Path("a.png"), Path("b.png")])
    {0: {1}}
    """
    row_of_path = {Path(path): row for row, path in enumerate(paths)}
    row_of_id = {record.image_id: row_of_path[Path(record.image_path)]
                 for record in records if record.image_id}
    found: dict[int, set[int]] = {}
    for record in records:
        rows = {row_of_id[other] for other in record.also_true if other in row_of_id}
        if rows:
            found.setdefault(row_of_path[Path(record.image_path)], set()).update(rows)
    return found


def shared_caption_ids(captions: Sequence[Sequence[str]]) -> np.ndarray:
    """(N,) int64: for each image, the lowest index of the images it shares a caption with,
    directly or through others.

    >>> shared_caption_ids([("a",), ("b",), ("c", "a"), ("b",)]).tolist()
    [0, 1, 0, 1]
    """
    parent = list(range(len(captions)))

    def root(index: int) -> int:
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    first: dict[str, int] = {}
    for index, texts in enumerate(captions):
        for text in texts:
            other = first.setdefault(text, index)
            low, high = sorted((root(index), root(other)))
            parent[high] = low
    return np.asarray([root(index) for index in range(len(captions))], dtype=np.int64)


def decode_all(paths: Sequence[Path], preprocess: Preprocess) -> torch.Tensor:
    """Every image through the model's preprocessing once: (N, 3, H, W) in fp16."""
    tensors = []
    for path in paths:
        try:
            image = open_image(path)
        except ImageReadError as error:
            raise ValueError(f"cannot read training image {path} ({error.reason}); remove "
                             f"it from the captions file or fix the path") from None
        tensors.append(preprocess(image))
    return torch.stack(tensors).half()

"""The modality gap: where a model's text vectors sit, as one mean vector.

Contrastive image-text models put all text vectors in one narrow cone and all image
vectors in another (Liang et al., "Mind the Gap", NeurIPS 2022): a text query's best image
cosine is ~0.25, and an HNSW graph built on image vectors loses most of its recall on such
out-of-distribution queries. Subtracting each side's mean removes the gap. The image mean
belongs to a collection (the store computes it); the text mean belongs to the model, and
is the mean of its vectors for a fixed list of generic captions, so every collection built
with one model records the same text mean.

Example:
    >>> text_mean = mean_text_vector(model)  # (D,) float32, not unit length
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

# Short, generic, varied: everyday photo subjects, scenes and the shapes-and-colours
# language of the generated scenes this project trains on. Never change this list for an
# existing model: collections record the mean it gives.
GENERIC_CAPTIONS: tuple[str, ...] = (
    "a photo", "a picture of something", "an image", "a close-up photo",
    "a photo of a person", "a group of people standing together", "a child playing",
    "a man smiling", "a woman walking down the street", "people sitting at a table",
    "a photo of a dog", "a cat sleeping on a sofa", "a bird on a branch",
    "a horse in a field", "a cow grazing", "fish in the water",
    "a car parked on the street", "a bus on the road", "a bicycle leaning on a wall",
    "a train at a station", "an airplane in the sky", "a boat on the lake",
    "a house with a garden", "a tall building in a city", "a bridge over a river",
    "a kitchen with a table", "a living room", "a bedroom with a bed",
    "a plate of food", "a cup of coffee", "a bowl of fruit", "a pizza on a table",
    "a beach with the sea", "mountains under a blue sky", "a forest path",
    "a snowy landscape", "a sunset over the water", "a city at night", "a green park",
    "a flower in a garden", "a tree in autumn", "a field of grass",
    "a book on a desk", "a laptop computer", "a phone in a hand", "a clock on the wall",
    "a ball on the ground", "a toy on the floor", "a chair and a table",
    "a red circle", "a blue square", "a green triangle", "a yellow star",
    "a small shape next to a large shape", "a red circle left of a blue square",
    "two shapes side by side", "a shape above another shape", "three objects in a row",
    "something red", "something blue", "a dark picture", "a bright picture",
    "a black and white photo", "a drawing", "a painting", "text on a sign",
)


# What ingest measures text search with (``store.calibrate_text_search``): the generic
# captions above and everyday subjects in everyday settings, 570 in all. At 1M synthetic
# points the 66 generic captions alone misjudged recall@20 by 0.003-0.01 and chose a beam
# of 2,400 where held-out queries reached 0.99 at 1,200; these 570 chose 1,600 (27.2 ms
# per query against 37.9 in the calibration's timing), held-out recall 0.9933
# (bench/results/ann_bench_1m_calibration.json).
# Unlike GENERIC_CAPTIONS this list may grow: a collection records the plan it measured,
# not the captions.
_SUBJECTS: tuple[str, ...] = (
    "a dog", "a cat", "a child", "a man", "a woman", "a group of friends", "a family",
    "a bird", "a horse", "a squirrel", "a swan", "a car", "a bicycle", "a motorbike",
    "a boat", "a train", "a tractor", "a red circle", "a blue square", "a green triangle",
    "a yellow star", "a birthday cake", "a bowl of soup", "a sandwich", "a tent",
    "a wooden bench", "an old house", "a lighthouse", "a church", "a market stall",
    "a guitar", "a football", "an umbrella", "a kite", "a teddy bear", "a dancer",
)
_SETTINGS: tuple[str, ...] = (
    "on a beach", "in the snow", "at night", "in a park", "in the rain",
    "on a city street", "in a kitchen", "in the mountains", "next to a lake",
    "in a garden", "at sunset", "indoors", "in a meadow", "in a black and white photo",
)
CALIBRATION_CAPTIONS: tuple[str, ...] = GENERIC_CAPTIONS + tuple(
    f"{subject} {setting}" for subject in _SUBJECTS for setting in _SETTINGS)


def mean_text_vector(model: Any, captions: Sequence[str] = GENERIC_CAPTIONS,
                     batch_size: int = 32) -> np.ndarray:
    """The mean of ``model``'s unit text vectors for ``captions``: (D,) float32.

    ``model`` is any twinrank model (``tokenize`` + ``encode_text``); it is run in
    inference mode on whatever device it lives on.
    """
    vectors = caption_vectors(model, captions, batch_size)
    return vectors.astype(np.float64).mean(axis=0).astype(np.float32)


def caption_vectors(model: Any, captions: Sequence[str] = GENERIC_CAPTIONS,
                    batch_size: int = 32) -> np.ndarray:
    """``model``'s unit text vectors for ``captions``: (N, D) float32. Ingest searches the
    collection with those of ``CALIBRATION_CAPTIONS`` to measure which plan text queries
    should take (``store.calibrate_text_search``).

    Example:
        >>> caption_vectors(model, ["a red circle", "a blue square"]).shape
        (2, 64)
    """
    import torch

    if not captions:
        raise ValueError("caption_vectors needs at least one caption")
    parts = []
    with torch.inference_mode():
        for start in range(0, len(captions), batch_size):
            batch = list(captions[start:start + batch_size])
            vectors = model.encode_text(model.tokenize(batch)).text_vector  # (B, D)
            vectors = torch.nn.functional.normalize(vectors.float(), dim=-1)
            parts.append(vectors.cpu().numpy())
    return np.concatenate(parts).astype(np.float32)

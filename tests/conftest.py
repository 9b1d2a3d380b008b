"""Shared fixtures: one tiny random model per session, generated image folders."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from twinrank.models import TwinModel, create_model

torch.set_num_threads(2)

# The tiny test models are random: their cross-encoders were never trained, and twinrank
# refuses to rerank with such a head unless told it is on purpose. Tests of the machinery
# say so once here (and in the processes they start); tests of the refusal unset it.
os.environ.setdefault("TWINRANK_ALLOW_UNTRAINED_RERANKER", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``gpu`` tests skip themselves without CUDA (not deselected: on a GPU they run)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA, and torch sees no GPU here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def _tiny_model_once() -> TwinModel:
    return create_model("twinrank-tiny", device="cpu")


@pytest.fixture
def tiny_model(_tiny_model_once: TwinModel) -> TwinModel:
    """A fresh copy of the session's tiny random model (tests may change it)."""
    return copy.deepcopy(_tiny_model_once)


def make_image(path: Path, seed: int, size: tuple[int, int] = (48, 40)) -> Path:
    """A small image with random coloured blocks, different for every seed."""
    rng = np.random.default_rng(seed)
    pixels = np.kron(rng.integers(0, 255, (4, 4, 3)), np.ones((size[1] // 4, size[0] // 4, 1)))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """10 distinct images in two sub-folders, plus one corrupt file."""
    root = tmp_path / "photos"
    for i in range(6):
        make_image(root / "2021" / f"a{i}.png", seed=i)
    for i in range(6, 10):
        make_image(root / "2022" / "beach" / f"b{i}.jpg", seed=i)
    (root / "2022" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    return root

"""The model stage: a batch of decoded images -> image vectors + cacheable image tokens.

The model's preprocessing is split in two: the PIL part (resize, crop) runs on the decode
workers, image by image, and ends in a small uint8 array; the tensor part (scale and
normalise) runs here, once per batch. So the model thread does little besides the forward.

Precision: on CUDA, autocast to bf16 (fp16 where bf16 is missing). On a CPU with native
bf16 (AVX512-BF16 / AMX), "auto" runs a bf16 *copy* of the image tower (casting the
weights measured ~2x faster than fp32 here; autocast was slower) when the tower is big
enough to be bound by its matrix products; small towers stay fp32 and exact.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from twinrank.models.device import autocast, inference_dtype
from twinrank.models.encoder import ImageEncoder

BF16_MIN_PARAMS = 10_000_000  # image towers below this are overhead-bound: bf16 gains nothing
# Families whose JPEGs ingest decodes at full size, never drafted (``models.images``):
# their stored vectors and tokens are then those of the reference preprocessing of the
# file (BlipProcessor), as a reranker reading the file computes them (blip-itm), up to the
# fp16 of the tokens. Drafting to 2x moved a random BLIP-base's vectors by up to 7e-3 and
# its match logits by 8e-3 (bench/decode_bench.py), to save a decode that costs a few
# percent of a BLIP forward on a CPU. Other families draft to DRAFT_MARGIN x their input.
FULL_DECODE_FAMILIES = frozenset({"blip"})


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 instructions (AVX512-BF16 or AMX), where bf16 is ~2x fp32."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = handle.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def decode_size(model: ImageEncoder) -> int | None:
    """The ``target_size`` ingest decodes ``model``'s images with (``models.images``: a
    JPEG is drafted to at least ``DRAFT_MARGIN`` times it), or None for a full decode.

    A reader whose pixels must equal ingest's (a reranker re-reading a file, evaluation)
    opens images with ``open_image(path, target_size=decode_size(model))``.

    Example:
        >>> decode_size(model)  # the tiny model reads 32 px: JPEGs kept at >= 64 px
        32
    """
    return None if model.family in FULL_DECODE_FAMILIES else int(model.image_size)


def choose_dtype(model: ImageEncoder, precision: str = "auto") -> torch.dtype:
    """The dtype the image tower runs in for ``precision`` (auto, fp32, bf16, fp16)."""
    device = model.device
    if precision != "auto" or device.type != "cpu":
        return inference_dtype(device, precision)
    params = sum(p.numel() for m in model.image_modules() for p in m.parameters())
    if cpu_has_native_bf16() and params >= BF16_MIN_PARAMS:
        return torch.bfloat16
    return torch.float32


class ImageEmbedder:
    """Runs the image tower (and the head's token projection) on batches of images.

    Example:
        >>> vectors, tokens = ImageEmbedder(model).embed([image])
        >>> vectors.shape, tokens.shape
        ((1, 64), (1, 16, 256))

    ``text_model`` gives the full model when ingest needs its text side (to measure text
    search, ``ingest.runner.measure_text_search``); by default ``model`` itself. It is a
    function so that an image-only ``model`` (``models.image_side``) loads the text
    tower only on the rare run that needs it. ``in_place`` casts ``model``'s own image
    modules to the chosen dtype instead of a copy (for a model nothing else uses: it
    saves holding the fp32 weights beside their bf16 copy).
    """

    def __init__(self, model: ImageEncoder, precision: str = "auto",
                 text_model: Callable[[], Any] | None = None, in_place: bool = False) -> None:
        self.model = model
        self.text_model: Callable[[], Any] = text_model or (lambda: model)
        self.device = model.device
        self.dtype = choose_dtype(model, precision)
        self.preparer = ImagePreparer(model.preprocess, decode_size(model))
        mean, std = self.preparer.mean, self.preparer.std
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self._tower = model
        self._cast_inputs = False
        if self.device.type == "cpu" and self.dtype != torch.float32:
            self._tower = _cast_in_place(model, self.dtype) if in_place else \
                _image_tower_copy(model, self.dtype)
            self._cast_inputs = True

    @property
    def target_size(self) -> int | None:
        """What ingest's decoders pass ``decode_image`` (``decode_size``): JPEGs are
        decoded at a scale that keeps twice the model's input; None: at full size."""
        return self.preparer.target_size

    def prepare(self, image: Image.Image) -> np.ndarray:
        """The PIL half of preprocessing (thread-safe): RGB image -> (H, W, 3) uint8."""
        return self.preparer.prepare(image)

    def pixels_from_arrays(self, arrays: Sequence[np.ndarray]) -> torch.Tensor:
        """The tensor half, per batch: uint8 (H, W, 3) arrays -> normalised (B, 3, H, W)."""
        if arrays[0].dtype != np.uint8:
            return torch.from_numpy(np.stack(arrays))
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # (B, 3, H, W)
        return (batch.float().div(255) - self._mean) / self._std

    def pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return self.pixels_from_arrays([self.prepare(image) for image in images])

    @torch.inference_mode()
    def embed_pixels(self, pixels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(B, 3, H, W) -> image vectors (B, D) float32 and image tokens (B, T, W) float16."""
        pixels = pixels.to(self.device, non_blocking=True)
        if self._cast_inputs:
            pixels = pixels.to(self.dtype)
        with autocast(self.device, self.dtype):
            encoded = self._tower.encode_image(pixels)
        vectors = encoded.image_vector.float().cpu().numpy()
        tokens = encoded.image_tokens.to(torch.float16).cpu().numpy()
        return vectors, tokens

    def embed_arrays(self, arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return self.embed_pixels(self.pixels_from_arrays(arrays))

    def embed(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        return self.embed_pixels(self.pixels(images))


class ImagePreparer:
    """The PIL half of a model's preprocessing, without the model.

    Small and picklable (the transform's steps, no weights), so decode workers in other
    processes (Ray tasks) prepare images exactly as ``ImageEmbedder.prepare`` does.

    Example:
        >>> preparer = ImagePreparer(model.preprocess, decode_size(model))
        >>> preparer.prepare(image).shape
        (32, 32, 3)

    ``target_size`` is what the decoders pass ``decode_image`` (None: a full decode).
    """

    def __init__(self, preprocess: Any, target_size: int | None) -> None:
        self.preprocess = preprocess
        self.target_size = target_size
        split = _split_transform(preprocess)
        self.split = split is not None
        self.pil_steps, self.mean, self.std = split or ([], (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))

    def prepare(self, image: Image.Image) -> np.ndarray:
        """RGB image -> (H, W, 3) uint8 (thread-safe)."""
        if not self.split:  # an unusual transform: run all of it here -> (3, H, W) float
            return np.asarray(self.preprocess(image), dtype=np.float32)
        for step in self.pil_steps:
            image = step(image)
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _split_transform(
    transform: Any,
) -> tuple[list[Callable[[Any], Any]], Sequence[float], Sequence[float]] | None:
    """(PIL steps before ToTensor, normalisation mean, std) of a torchvision Compose.

    None when the transform is not PIL steps -> ToTensor -> Normalize; the workers then
    run all of it and hand over finished tensors. ``models.image_side``'s transform gives
    its split itself (without importing torchvision).
    """
    from twinrank.models.image_side import PilPreprocess

    if isinstance(transform, PilPreprocess):
        return list(transform.pil_steps), transform.mean, transform.std
    from torchvision import transforms as T

    steps = list(getattr(transform, "transforms", [transform]))
    cut = next((i for i, step in enumerate(steps) if isinstance(step, T.ToTensor)), None)
    if cut is None or len(steps) != cut + 2 or not isinstance(steps[-1], T.Normalize):
        return None
    normalize = steps[-1]
    return steps[:cut], tuple(normalize.mean), tuple(normalize.std)


def _cast_in_place(model: ImageEncoder, dtype: torch.dtype) -> ImageEncoder:
    for module in model.image_modules():
        module.to(dtype)
    return model


def _image_tower_copy(model: ImageEncoder, dtype: torch.dtype) -> ImageEncoder:
    """A copy of ``model`` whose image modules (``model.image_modules()``) run in ``dtype``.

    Only the image modules and the modules that hold them are copied: the text towers,
    tokenizers and everything else ingest never runs are shared, so the copy costs the
    image weights alone and the caller's model is left untouched. Every image module is
    cast — a SEP pair has two image towers, and casting only one left the other fp32 and
    made ``encode_image`` fail on bf16 input.
    """
    image_modules = model.image_modules()
    whole = model if isinstance(model, torch.nn.Module) else None
    assert whole is not None, "an image encoder with image modules is a torch module"
    inside = {id(m) for top in image_modules for m in top.modules()}
    holders = {id(m) for m in whole.modules()
               if any(id(sub) in inside for sub in m.modules())}
    shared: dict[int, object] = {
        id(m): m for m in whole.modules() if id(m) not in inside and id(m) not in holders}
    shared.update({id(v): v for name, v in vars(model).items()  # tokenizer, config, ...
                   if not name.startswith("_") and not isinstance(v, torch.nn.Module)})
    return _cast_in_place(copy.deepcopy(model, memo=shared), dtype)

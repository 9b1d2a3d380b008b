"""The model stage: a batch of decoded images -> image vectors + cacheable image tokens."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from models import TwinModel
from models.device import autocast, inference_dtype


class ImageEmbedder:
    """Runs the image tower (and the head's token projection) on batches of PIL images.

    Example:
        >>> vectors, tokens = ImageEmbedder(model).embed([image])
        >>> vectors.shape, tokens.shape
        ((1, 64), (1, 16, 256))
    """

    def __init__(self, model: TwinModel, precision: str = "auto") -> None:
        self.model = model
        self.device = model.device
        self.dtype = inference_dtype(self.device, precision)

    def pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return self.model.preprocess_images(images)

    @torch.inference_mode()
    def embed_pixels(self, pixels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(B, 3, H, W) -> image vectors (B, D) float32 and image tokens (B, T, W) float16."""
        pixels = pixels.to(self.device, non_blocking=True)
        with autocast(self.device, self.dtype):
            encoded = self.model.encode_image(pixels)
        vectors = encoded.image_vector.float().cpu().numpy()
        tokens = encoded.image_tokens.to(torch.float16).cpu().numpy()
        return vectors, tokens

    def embed(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        return self.embed_pixels(self.pixels(images))

"""The image side of a saved model folder, loaded without open_clip, torchvision or
transformers: what ingest runs when images are added to a collection that already exists.

Ingest only needs ``encode_image`` — the image tower and the fusion head's token
projection. Building the whole ``TwinModel`` imports open_clip, and open_clip imports
torchvision (whose ops import ``torch._dynamo``) and transformers: 3-4 s of a 2-core
machine before the first image, for code that ingest never runs. ``ImageSide`` is the same
vision transformer written with plain torch modules under open_clip's parameter names, so
it loads the ``clip.visual.*`` and ``head.image_in.*`` tensors of the folder's
``model.safetensors`` (and reads no other tensor) and computes what open_clip computes, to
the bit: tests compare the two on tiny random models of every supported variant.

Architectures it does not cover (timm or ResNet towers, attentional pooling, open_clip's
custom attention blocks, SEP pairs, BLIP) return None from ``load_image_side``, and ingest
builds the full model as before; the answers are the same either way.

Example:
    >>> from twinrank.models import save_model
    >>> side = load_image_side(save_model(model, "tiny-model"))  # a model folder
    >>> side.encode_image(side.preprocess_images([image])).image_vector.shape
    torch.Size([1, 64])
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from torch import nn

from twinrank.models.config import TwinConfig
from twinrank.models.fusion import image_projection
from twinrank.models.twin import ImageEncoding, pool_patch_tokens

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"  # as models.factory writes them
WEIGHTS_FILE = "model.safetensors"
PREFIXES = ("clip.visual.", "head.image_in.")  # the tensors encode_image reads
# vision_cfg keys whose open_clip default is all this tower implements
DEFAULTS_ONLY = {
    "attentional_pool": False, "block_type": None, "qk_norm": False,
    "scaled_cosine_attn": False, "scale_heads": False, "scale_attn_inner": False,
    "scale_attn": False, "scale_fc": False, "timm_model_name": None,
}


def load_image_side(source: str | Path, device: str | torch.device = "cpu") -> ImageSide | None:
    """The image side of the model folder ``source``, or None when it is not a folder of
    a plain ``TwinModel`` whose image tower this module implements (the caller then
    builds the full model)."""
    folder = Path(source)
    if not (folder / CONFIG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
        return None  # a name, a pretrained tag, a BLIP folder: the full model's business
    try:
        data = json.loads((folder / CONFIG_FILE).read_text())
        model_id, layout = data.pop("model_id", None), data.pop("layout", None)
        config = TwinConfig.from_dict(data).with_pretrained(None)
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        log.debug("full model for ingest: %s", error)  # the factory reports a bad folder
        return None
    reason = "a SEP pair" if layout else unsupported(config)
    if reason or model_id is None:
        log.debug("full model for ingest: %s", reason or "no recorded model id")
        return None
    with torch.device("meta"):  # shapes only: every tensor comes from the file below
        side = ImageSide(config, model_id, str(folder.resolve()))
    try:
        with safe_open(str(folder / WEIGHTS_FILE), framework="pt") as weights:
            state = {key: weights.get_tensor(key) for key in weights.keys()  # noqa: SIM118
                     if key.startswith(PREFIXES)}
        own = side.state_dict()
        state = {key: value.to(own[key].dtype) if key in own else value
                 for key, value in state.items()}
        side.load_state_dict(state, assign=True)  # strict: every tensor of the side is set
    except Exception as error:  # noqa: BLE001  (a damaged file: the factory says what is wrong)
        log.debug("full model for ingest: %s", error)
        return None
    return side.to(device).eval()


def unsupported(config: TwinConfig) -> str | None:
    """Why ``ImageSide`` cannot stand in for ``config``'s image tower; None when it can."""
    vision = config.clip_cfg.get("vision_cfg", {})
    if isinstance(vision.get("layers"), list | tuple):
        return "a ResNet image tower"
    odd = [key for key, default in DEFAULTS_ONLY.items() if vision.get(key, default) != default]
    if odd:
        return f"image tower options {odd}"
    if vision.get("pool_type", "tok") not in ("tok", "avg"):
        return f"pool_type {vision['pool_type']!r}"
    if config.clip_cfg.get("quick_gelu") and vision.get("act_kwargs"):
        return "QuickGELU with act_kwargs"
    if config.clip_cfg.get("cast_dtype") or config.clip_cfg.get("hf_model_name"):
        return "a cast dtype or a Hugging Face tower"
    return None


class ImageSide(nn.Module):
    """``TwinModel.encode_image`` without the text tower, the tokenizer or open_clip.

    Parameter names are the ``TwinModel``'s (``clip.visual.*``, ``head.image_in.*``), so
    its weights load as they are; ``image_modules`` lets ingest cast a bf16 copy.
    """

    family = "open_clip"

    def __init__(self, config: TwinConfig, model_id: str, source: str) -> None:
        super().__init__()
        self.config = config
        self._model_id, self._source = model_id, source
        visual = VisionTower(config.clip_cfg["vision_cfg"], config.embed_dim,
                             bool(config.clip_cfg.get("quick_gelu", False)))
        self.clip = _Clip(visual)
        self.head = _Head(image_projection(visual.width, config.fusion.width))
        self.preprocess = PilPreprocess(config.image_size, config.image_mean, config.image_std)

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def source(self) -> str:
        return self._source

    @property
    def pretrained(self) -> str | None:
        return None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def vector_size(self) -> int:
        return self.config.embed_dim

    @property
    def token_shape(self) -> tuple[int, int]:
        return (self.config.image_token_count, self.config.fusion.width)

    def image_modules(self) -> list[nn.Module]:
        return [self.clip, self.head]

    def preprocess_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return torch.stack([self.preprocess(image) for image in images])

    def encode_image(self, pixels: torch.Tensor) -> ImageEncoding:
        """Image vectors and cacheable image tokens for pixels (B, 3, H, W), as
        ``TwinModel.encode_image`` computes them."""
        pooled, patch_tokens = self.clip.visual(pixels)  # (B, D), (B, N, vision_width)
        patch_tokens = pool_patch_tokens(patch_tokens, self.config.token_grid)
        return ImageEncoding(image_vector=F.normalize(pooled, dim=-1),
                             image_tokens=self.head.image_in(patch_tokens))


class _Clip(nn.Module):
    """Holds the tower under the ``TwinModel``'s parameter names (``clip.visual.*``)."""

    def __init__(self, visual: VisionTower) -> None:
        super().__init__()
        self.visual = visual


class _Head(nn.Module):
    """Holds the head's token projection under its names (``head.image_in.*``)."""

    def __init__(self, image_in: nn.Sequential) -> None:
        super().__init__()
        self.image_in = image_in


class LayerNorm(nn.LayerNorm):
    """open_clip's LayerNorm: the output in the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias,
                            self.eps).to(x.dtype)


class QuickGELU(nn.Module):
    """The activation OpenAI's CLIP was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class LayerScale(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.empty(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    """open_clip's ``ResidualAttentionBlock``: pre-norm self-attention, then the MLP."""

    def __init__(self, width: int, heads: int, mlp_width: int, act: nn.Module,
                 layer_scale: bool, norm: dict[str, Any]) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(width, **norm)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ls_1: nn.Module = LayerScale(width) if layer_scale else nn.Identity()
        self.ln_2 = LayerNorm(width, **norm)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, mlp_width)), ("gelu", act),
            ("c_proj", nn.Linear(mlp_width, width))]))
        self.ls_2: nn.Module = LayerScale(width) if layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)  # one tensor as query, key and value: attention's fused path
        x = x + self.ls_1(self.attn(y, y, y, need_weights=False)[0])
        return x + self.ls_2(self.mlp(self.ln_2(x)))


class Blocks(nn.Module):
    def __init__(self, blocks: list[Block]) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


class VisionTower(nn.Module):
    """open_clip's ``VisionTransformer`` in eval mode, returning (pooled @ proj, tokens).

    Parameters are left uninitialised (``load_image_side`` builds it on the meta device):
    every one is loaded from the folder.
    """

    def __init__(self, vision: dict[str, Any], embed_dim: int, quick_gelu: bool) -> None:
        super().__init__()
        size, patch = _pair(vision.get("image_size", 224)), _pair(vision.get("patch_size", 16))
        width, layers = int(vision.get("width", 768)), int(vision.get("layers", 12))
        heads = width // int(vision.get("head_width", 64))
        mlp_width = int(width * float(vision.get("mlp_ratio", 4.0)))
        norm = dict(vision.get("norm_kwargs") or {})
        self.width = width
        self.pool_type = vision.get("pool_type", "tok")
        self.final_ln_after_pool = bool(vision.get("final_ln_after_pool", False))
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch, stride=patch, bias=False)
        grid = (size[0] // patch[0]) * (size[1] // patch[1])
        self.class_embedding = nn.Parameter(torch.empty(width))
        self.positional_embedding = nn.Parameter(torch.empty(grid + 1, width))
        self.ln_pre: nn.Module = (nn.Identity() if vision.get("no_ln_pre")
                                  else LayerNorm(width, **norm))
        layer_scale = vision.get("ls_init_value") is not None

        def act() -> nn.Module:
            return QuickGELU() if quick_gelu else nn.GELU(**(vision.get("act_kwargs") or {}))

        self.transformer = Blocks([Block(width, heads, mlp_width, act(), layer_scale, norm)
                                   for _ in range(layers)])
        self.ln_post = LayerNorm(width, **norm)
        self.proj = nn.Parameter(torch.empty(width, embed_dim))

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv1(pixels)  # (B, width, gh, gw)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # (B, gh * gw, width)
        cls = self.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        if self.final_ln_after_pool:
            pooled, tokens = self._pool(x)
            pooled = self.ln_post(pooled)
        else:
            pooled, tokens = self._pool(self.ln_post(x))
        return pooled @ self.proj, tokens

    def _pool(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pool_type == "avg":
            return x[:, 1:].mean(dim=1), x[:, 1:]
        return x[:, 0], x[:, 1:]


class PilPreprocess:
    """open_clip's eval transform (``image_transform(size, is_train=False)``) without
    torchvision: shortest side to ``size`` (bicubic), centre crop, RGB, scale, normalise.

    ``pil_steps`` / ``mean`` / ``std`` are the split that ingest's decode workers use
    (``models.encode.ImagePreparer``); calling it runs all of it. Picklable.
    """

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        self.size = size
        self.mean, self.std = tuple(mean), tuple(std)
        self.pil_steps = [self.resize, self.crop, self.rgb]

    def resize(self, image: Image.Image) -> Image.Image:
        """torchvision's ``Resize(size)`` on a PIL image: the short side becomes ``size``."""
        width, height = image.size
        short, long = sorted((width, height))
        new_short, new_long = self.size, int(self.size * long / short)
        new = (new_short, new_long) if width <= height else (new_long, new_short)
        if new == (width, height):
            return image
        return image.resize(new, Image.Resampling.BICUBIC)

    def crop(self, image: Image.Image) -> Image.Image:
        """torchvision's ``CenterCrop(size)`` on an image at least ``size`` on each side."""
        width, height = image.size
        top = int(round((height - self.size) / 2.0))
        left = int(round((width - self.size) / 2.0))
        return image.crop((left, top, left + self.size, top + self.size))

    @staticmethod
    def rgb(image: Image.Image) -> Image.Image:
        return image.convert("RGB")

    def __call__(self, image: Image.Image) -> torch.Tensor:
        for step in self.pil_steps:
            image = step(image)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())  # (H, W, 3)
        pixels = pixels.permute(2, 0, 1).float().div(255)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (pixels - mean) / std


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    return (int(value[0]), int(value[1]))

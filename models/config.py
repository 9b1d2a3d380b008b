"""Model settings: what a TwinModel is made of, saved next to its weights.

A TwinModel is an open_clip image + text tower pair (the bi-encoder) plus a small fusion
head (the cross-encoder). ``TwinConfig`` records everything needed to rebuild it offline:
the open_clip architecture config itself is stored, not just its name, so a saved model
folder loads without the open_clip registry or a network.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).parent / "configs"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class FusionConfig:
    """Size of the fusion head: text tokens attend to cached image tokens.

    ``width`` is also the size of each cached image token, so it sets the store's bytes
    per image (tokens x width x 2 bytes in fp16).
    """

    width: int = 256
    layers: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    pooled_match: bool = False  # add a bilinear match of mean-pooled text and image tokens


@dataclass(frozen=True)
class TwinConfig:
    """Everything that defines a TwinModel.

    Example:
        >>> cfg = TwinConfig(name="twinrank-tiny", clip_cfg=load_clip_config("twinrank-tiny"))
        >>> cfg.token_grid
        0
    """

    name: str
    clip_cfg: dict[str, Any]
    pretrained: str | None = None
    fusion: FusionConfig = field(default_factory=FusionConfig)
    token_grid: int = 0  # pool patch tokens to grid x grid before caching; 0 keeps all
    # True only once a match objective trained the fusion head (``twinrank train``); a
    # pretrained open_clip wrapped in a TwinModel has a random head and is no reranker.
    reranker_trained: bool = False
    image_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

    @property
    def image_size(self) -> int:
        size = self.clip_cfg["vision_cfg"]["image_size"]
        return int(size[0] if isinstance(size, list | tuple) else size)

    @property
    def embed_dim(self) -> int:
        return int(self.clip_cfg["embed_dim"])

    @property
    def context_length(self) -> int:
        return int(self.clip_cfg["text_cfg"].get("context_length", 77))

    @property
    def image_token_count(self) -> int:
        """Number of cached tokens per image."""
        if self.token_grid:
            return self.token_grid * self.token_grid
        vision = self.clip_cfg["vision_cfg"]
        return int((self.image_size // int(vision["patch_size"])) ** 2)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["schema_version"] = SCHEMA_VERSION
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TwinConfig:
        data = dict(data)
        data.pop("schema_version", None)
        fusion = FusionConfig(**data.pop("fusion", {}))
        for key in ("image_mean", "image_std"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(fusion=fusion, **data)

    def with_pretrained(self, pretrained: str | None) -> TwinConfig:
        return replace(self, pretrained=pretrained)


# Settings per known architecture: larger models pool their 7x7 patch grid to 4x4 so the
# cached tokens stay small (16 x 256 x 2 bytes = 8 kB per image).
DEFAULT_TOKEN_GRID = {"twinrank-tiny": 0, "twinrank-demo": 0}


def load_clip_config(name: str) -> dict[str, Any]:
    """The open_clip architecture config for ``name``: ours first, then open_clip's."""
    ours = CONFIG_DIR / f"{name}.json"
    if ours.is_file():
        return dict(json.loads(ours.read_text()))
    import open_clip

    cfg = open_clip.get_model_config(name)
    if cfg is None:
        known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))
        raise ValueError(
            f"Unknown model {name!r}. Use an open_clip architecture name such as 'ViT-B-32' "
            f"(see open_clip.list_models()), one of ours ({known}), or a model folder path."
        )
    return dict(cfg)


def twin_config(name: str, pretrained: str | None = None) -> TwinConfig:
    """Default TwinConfig for an architecture name.

    Our JSON configs may carry a ``"twinrank"`` section next to open_clip's keys, with the
    fusion head's size and the token grid: ``{"fusion": {"width": 128}, "token_grid": 0}``.
    """
    clip_cfg = load_clip_config(name)
    ours = clip_cfg.pop("twinrank", {})
    fusion = FusionConfig(**ours.get("fusion", {}))
    grid = ours.get("token_grid", DEFAULT_TOKEN_GRID.get(name))
    if grid is None:
        patches = clip_cfg["vision_cfg"]["image_size"] // clip_cfg["vision_cfg"].get(
            "patch_size", 32
        )
        grid = 4 if patches > 4 else 0
    return TwinConfig(name=name, clip_cfg=clip_cfg, pretrained=pretrained, fusion=fusion,
                      token_grid=grid)

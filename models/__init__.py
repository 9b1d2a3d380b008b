"""Models: open_clip towers + fusion head = TwinModel, and the factory that builds them.

Names are imported on first use (PEP 562), so a light submodule (``models.images``, the
image reader) is imported without torch: a no-op ingest and a fast search never load it.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from twinrank.models.config import FusionConfig, TwinConfig, twin_config
    from twinrank.models.device import pick_device
    from twinrank.models.factory import (
        ModelLoadError,
        create_model,
        load_model,
        model_id,
        save_model,
        with_fusion_layers,
        with_image_size,
    )
    from twinrank.models.pair import SepTwinModel
    from twinrank.models.twin import ImageEncoding, TextEncoding, TwinModel

_SHIPPED_DEMO = Path(__file__).parent / "demo"
# The model `twinrank demo` uses: the one trained on generated scenes when it is shipped.
DEMO_MODEL = str(_SHIPPED_DEMO) if (_SHIPPED_DEMO / "config.json").is_file() else "twinrank-tiny"

# public name -> the submodule that defines it
_WHERE = {
    "FusionConfig": "config", "TwinConfig": "config", "twin_config": "config",
    "pick_device": "device",
    "ModelLoadError": "factory", "create_model": "factory", "load_model": "factory",
    "model_id": "factory", "save_model": "factory", "with_fusion_layers": "factory",
    "with_image_size": "factory",
    "SepTwinModel": "pair",
    "ImageEncoding": "twin", "TextEncoding": "twin", "TwinModel": "twin",
}

__all__ = [
    "DEMO_MODEL",
    "FusionConfig",
    "ImageEncoding",
    "ModelLoadError",
    "SepTwinModel",
    "TextEncoding",
    "TwinConfig",
    "TwinModel",
    "create_model",
    "load_model",
    "model_id",
    "pick_device",
    "save_model",
    "twin_config",
    "with_fusion_layers",
    "with_image_size",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(f"twinrank.models.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'twinrank.models' has no attribute {name!r}")

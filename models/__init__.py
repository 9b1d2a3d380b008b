"""Models: open_clip towers + fusion head = TwinModel, and the factory that builds them."""

from pathlib import Path

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

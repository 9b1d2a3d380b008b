"""Where every TwinModel comes from: one factory, three sources.

- an architecture name, randomly initialised (``create_model("twinrank-tiny")``),
- an open_clip architecture with pretrained weights (``create_model("ViT-B-32",
  pretrained="laion2b_s34b_b79k")`` or a local checkpoint file),
- a saved model folder (``create_model("runs/demo")``): config.json + model.safetensors.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from twinrank.models import presets
from twinrank.models.config import TwinConfig, twin_config
from twinrank.models.device import pick_device
from twinrank.models.evidence import read_evidence
from twinrank.models.fusion import FusionHead
from twinrank.models.pair import SEP_LAYOUT, SepTwinModel
from twinrank.models.twin import TwinModel, build_clip

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
HUB_HOST = ("huggingface.co", 443)
BLIP_MARKER_FILE = "twinrank.json"  # a BLIP folder twinrank saved (models.blip)


class ModelLoadError(RuntimeError):
    """A model could not be built or loaded; the message says what to do."""


def create_model(
    name_or_path: str | Path,
    pretrained: str | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
) -> TwinModel:
    """Build or load a model in eval mode: a preset name (``twinrank models``), an open_clip
    architecture (with ``pretrained``: a tag or a weights file), ``blip:HF_ID_OR_FOLDER``,
    or a model folder.

    Random initialisation is seeded, so the same name and seed always give the same
    weights (and the same ``model_id``).

    Example:
        >>> model = create_model("twinrank-tiny")
        >>> model_id(model)
        'twinrank-tiny:random:0'
    """
    target = pick_device(str(device) if device is not None else None)
    if presets.is_preset(str(name_or_path)) and pretrained is None:
        missing = presets.missing_weights(str(name_or_path))
        if missing:
            raise ModelLoadError(missing)
        name_or_path, pretrained = presets.resolve(str(name_or_path))
    path = Path(name_or_path)
    if str(name_or_path).startswith("blip:") or (path / BLIP_MARKER_FILE).is_file():
        from twinrank.models.blip import load_blip  # transformers loads only for BLIP

        # BLIP offers the surface every caller uses (``models.encoder.Encoder``), not the
        # TwinModel class: callers that reach TwinModel internals check the family first.
        return cast(TwinModel, load_blip(str(name_or_path), target))
    if (path / CONFIG_FILE).is_file():
        model = load_model(path)
    elif path.suffix in (".json", ".safetensors") or os.sep in str(name_or_path):
        raise ModelLoadError(
            f"Model folder {str(name_or_path)!r} not found (it needs {CONFIG_FILE} and "
            f"{WEIGHTS_FILE}); pass an existing folder or an architecture name like 'ViT-B-32'."
        )
    else:
        try:
            config = twin_config(str(name_or_path), pretrained)
        except ValueError as error:
            raise ModelLoadError(str(error)) from error
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            clip = _pretrained_clip(config) if pretrained else build_clip(config)
            model = TwinModel(config, clip, f"{config.name}:{pretrained or 'random'}:{seed}")
    model._source = str(Path(name_or_path).resolve()) if path.is_dir() else str(name_or_path)
    model.reranker_evidence = read_evidence(path) if path.is_dir() else None
    return model.to(target).eval()


def _pretrained_clip(config: TwinConfig) -> torch.nn.Module:
    """open_clip weights by tag or local file, with one clear sentence when they can't load."""
    import open_clip

    tag = str(config.pretrained)
    is_file = Path(tag).is_file() or tag.startswith("local-dir:")
    if not is_file and not _in_hub_cache(config.name, tag) and not hub_reachable():
        pull = next((p.name for p in presets.PRESETS
                     if (p.model, p.pretrained) == (config.name, tag)), None)
        how = (f"run `twinrank models pull {pull}` on a connected machine and copy its "
               f"HF_HOME here" if pull else
               "download them on a connected machine and pass the file with --pretrained")
        raise ModelLoadError(
            f"Pretrained weights {config.name!r} / {tag!r} are not in the Hugging Face cache "
            f"and the hub is unreachable: {how}, or use --model demo for the offline demo.")
    try:
        clip = open_clip.create_model(config.name, pretrained=tag, force_custom_text=True)
    except Exception as error:  # open_clip raises many kinds; all mean "could not load"
        raise ModelLoadError(
            f"Could not load pretrained weights {config.name!r} / {tag!r}: {error}. "
            f"Check the tag with open_clip.list_pretrained(), or pass a local checkpoint file."
        ) from error
    clip.visual.output_tokens = True
    clip.text.output_tokens = True
    return clip


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers: checked once, in seconds, before a download
    that would otherwise retry for most of a minute when offline."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        with socket.create_connection(HUB_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def _in_hub_cache(name: str, tag: str) -> bool:
    """Whether the weights for ``name`` / ``tag`` are already in the local hub cache."""
    import open_clip
    from huggingface_hub import try_to_load_from_cache

    cfg = open_clip.get_pretrained_cfg(name, tag) or {}
    repo = str(cfg.get("hf_hub", "")).rstrip("/")
    if not repo:
        return False
    files = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
    return any(isinstance(try_to_load_from_cache(repo, f), str) for f in files)


def save_model(model: TwinModel, folder: str | Path, dtype: torch.dtype | None = None,
               reranker_trained: bool | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors``; the folder loads with ``create_model``.

    ``dtype=torch.float16`` halves the file (floating-point weights only); loading casts
    the weights back to the model's fp32 parameters. A ``SepTwinModel`` (SEP's bi-encoder
    + cross-encoder pair) is recorded as such and loads back as one. ``reranker_trained``
    records whether a match objective trained the fusion head (``twinrank train`` says so);
    None keeps the model's own record.
    """
    from twinrank.models.blip import BlipTwinModel

    if isinstance(model, BlipTwinModel):  # a Hugging Face folder + twinrank's marker
        return model.save(folder, dtype, reranker_trained)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    digest = _file_digest(folder / WEIGHTS_FILE)
    config = model.config
    if reranker_trained is not None:
        config = replace(config, reranker_trained=reranker_trained)
    data = config.to_dict() | {"model_id": f"{model.config.name}@{digest}"}
    if isinstance(model, SepTwinModel):
        data["layout"] = SEP_LAYOUT
    (folder / CONFIG_FILE).write_text(json.dumps(data, indent=2))
    return folder


def load_model(folder: str | Path) -> TwinModel:
    folder = Path(folder)
    try:
        data = json.loads((folder / CONFIG_FILE).read_text())
        recorded_id = data.pop("model_id", None)
        layout = data.pop("layout", None)
        config = TwinConfig.from_dict(data).with_pretrained(None)
        identity = recorded_id or f"{config.name}@{_file_digest(folder / WEIGHTS_FILE)}"
        with skip_weight_init():  # every weight is replaced by the file's just below
            model = (SepTwinModel(config, model_id=identity) if layout == SEP_LAYOUT
                     else TwinModel(config, model_id=identity))
        own = model.state_dict()
        state = {key: value.to(own[key].dtype) if key in own and value.dtype != own[key].dtype
                 else value for key, value in load_file(str(folder / WEIGHTS_FILE)).items()}
        model.load_state_dict(state, assign=True)  # strict: no weight is left unset
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as error:
        raise ModelLoadError(f"Could not load the model folder {str(folder)!r}: {error}") from error
    return model


@contextlib.contextmanager
def skip_weight_init() -> Iterator[None]:
    """Build modules without their random initialisation, for weights a checkpoint is about
    to replace (as transformers' ``no_init_weights``). Loading a ViT-B-32 model folder spent
    ~60% of its CPU time drawing random numbers that were overwritten at once; its parameters
    are then taken from the file as they are (``assign=True``), not copied a second time.
    """
    names = ("uniform_", "normal_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_",
             "xavier_uniform_", "xavier_normal_", "constant_", "zeros_", "ones_",
             "orthogonal_")
    saved = {name: getattr(torch.nn.init, name) for name in names}

    def keep(tensor: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        return tensor

    try:
        for name in names:
            setattr(torch.nn.init, name, keep)
        yield
    finally:
        for name, function in saved.items():
            setattr(torch.nn.init, name, function)


def with_image_size(model: TwinModel, image_size: int) -> TwinModel:
    """The same model for ``image_size`` x ``image_size`` pictures, to fine-tune at a new
    resolution (as FixRes and open_clip's ``resize_pos_embed`` do): every weight is kept
    and the image tower's position embeddings are interpolated (bicubic) to the new patch
    grid. The fusion head reads tokens without positions of its own, so it carries over.

    >>> model = create_model("twinrank-tiny")
    >>> with_image_size(model, 48).config.image_size, model.config.image_size
    (48, 32)
    """
    config = model.config
    if image_size == config.image_size:
        return model
    vision = config.clip_cfg["vision_cfg"]
    patch = int(vision.get("patch_size") or 0)
    if config.token_grid or not patch or image_size <= 0 or image_size % patch:
        raise ValueError(
            f"cannot resize {config.name} to {image_size} px: the size must be a positive "
            f"multiple of the patch size ({patch or 'unknown'}), on a model that caches every "
            f"patch token (token_grid 0)")
    clip_cfg = {**config.clip_cfg, "vision_cfg": {**vision, "image_size": image_size}}
    resized = type(model)(replace(config, clip_cfg=clip_cfg),
                          model_id=f"{model.model_id}+{image_size}px")
    state = model.state_dict()
    for key, value in resized.state_dict().items():
        if key.endswith("visual.positional_embedding") and value.shape != state[key].shape:
            state[key] = resize_positions(state[key], value.shape[0])
    resized.load_state_dict(state)
    return resized.to(next(model.parameters()).device).train(model.training)


def with_fusion_layers(model: TwinModel, layers: int) -> TwinModel:
    """The same model with a deeper fusion head: ``layers`` decoder layers, the first ones
    the trained head's and the new ones appended as identities (their attention and MLP
    output projections start at zero, so every score is unchanged until training moves
    them), the way a trained network is grown without losing what it learned.

    >>> model = create_model("twinrank-tiny")
    >>> len(with_fusion_layers(model, 3).head.layers), len(model.head.layers)
    (3, 2)
    """
    config = model.config
    if layers == config.fusion.layers:
        return model
    if layers < config.fusion.layers:
        raise ValueError(f"--fusion-layers {layers} would drop trained layers of a head with "
                         f"{config.fusion.layers}; it can only grow")
    grown = type(model)(replace(config, fusion=replace(config.fusion, layers=layers)),
                        model_id=f"{model.model_id}+head{layers}")
    missing, unexpected = grown.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any(".layers." not in key for key in missing):
        raise ValueError(f"cannot grow this head: unexpected {unexpected}, missing {missing}")
    for head in (module for module in grown.modules() if isinstance(module, FusionHead)):
        for layer in list(head.layers)[config.fusion.layers:]:
            for name in ("self_attn.out_proj", "multihead_attn.out_proj", "linear2"):
                projection = layer.get_submodule(name)
                assert isinstance(projection, torch.nn.Linear)
                torch.nn.init.zeros_(projection.weight)
                torch.nn.init.zeros_(projection.bias)
    return grown.to(next(model.parameters()).device).train(model.training)


def resize_positions(table: torch.Tensor, tokens: int) -> torch.Tensor:
    """A ViT's (1 + g*g, D) position table, class token first, interpolated to ``tokens``
    rows: the g x g grid resampled bicubically, the class token's row kept."""
    old, new = math.isqrt(table.shape[0] - 1), math.isqrt(tokens - 1)
    if old * old != table.shape[0] - 1 or new * new != tokens - 1:
        raise ValueError(f"cannot resize a position table of {table.shape[0]} rows to {tokens}: "
                         f"only a class token plus a square patch grid is supported")
    grid = table[1:].reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", antialias=True,
                         align_corners=False)
    return torch.cat([table[:1], grid.permute(0, 2, 3, 1).reshape(new * new, -1).to(table)])


def model_id(model: TwinModel) -> str:
    """The identity a collection records, so it is never searched with another model."""
    return model.model_id


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]

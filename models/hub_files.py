"""What loading a Hugging Face checkpoint needs, whether the local cache holds it, and
fetching exactly that.

A checkpoint's weights live in ``model.safetensors`` or, in older repositories, in
``pytorch_model.bin``, each possibly sharded behind an ``*.index.json``; next to them are
the small files the config, tokenizer and processor read. ``twinrank models pull`` and a
first load that downloads both fetch ``files_to_load`` of the repository's listing, with
huggingface_hub's progress bars on stderr. The cache counts as holding a checkpoint when
its weights are there (``config.json`` alone is what an interrupted download leaves).

Only ``huggingface_hub`` is imported, and lazily, so ``models pull`` loads no torch.

Example:
    >>> files_to_load(["config.json", "pytorch_model.bin", "tf_model.h5", "vocab.txt"])
    ['config.json', 'vocab.txt', 'pytorch_model.bin']
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

# transformers' weights files, in the order it prefers them
TRANSFORMERS_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
# open_clip's own files in a hub repo (the same repo often holds a transformers copy too)
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
OPEN_CLIP_SUPPORT = ("open_clip_config.json",)
SUPPORT_SUFFIXES = (".json", ".txt", ".model")  # config, tokenizer, processor files
WEIGHTS_WORDS = "model.safetensors or pytorch_model.bin"


def files_to_load(listing: Sequence[str], weights: Sequence[str] = TRANSFORMERS_WEIGHTS,
                  support: Sequence[str] | None = None) -> list[str]:
    """The files of a repository ``listing`` that loading reads: the top-level config,
    tokenizer and processor files (or exactly ``support``), then the first of ``weights``
    present, whole or as an index and its shards. Empty when no weights file is listed.

    >>> files_to_load(["config.json", "model.safetensors.index.json",
    ...                "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
    ...                "pytorch_model.bin", "onnx/model.onnx"])  # doctest: +NORMALIZE_WHITESPACE
    ['config.json', 'model.safetensors.index.json', 'model-00001-of-00002.safetensors',
     'model-00002-of-00002.safetensors']
    """
    chosen = _weights_files(listing, weights)
    if not chosen:
        return []
    if support is None:
        small = [name for name in listing if "/" not in name and name.endswith(SUPPORT_SUFFIXES)
                 and not name.endswith(".index.json")]
    else:
        small = [name for name in support if name in listing]
    return [*small, *chosen]


def tokenizer_files(listing: Sequence[str]) -> list[str]:
    """The top-level config and tokenizer files alone (a text model whose weights come
    inside another checkpoint)."""
    return [name for name in listing if "/" not in name and name.endswith(SUPPORT_SUFFIXES)
            and not name.endswith(".index.json")]


def _weights_files(listing: Sequence[str], weights: Sequence[str]) -> list[str]:
    for name in weights:
        if name in listing:
            return [name]
        if f"{name}.index.json" in listing:
            stem, suffix = name.rsplit(".", 1)
            shard = re.compile(rf"{re.escape(stem)}-\d+-of-\d+\.{re.escape(suffix)}")
            return [f"{name}.index.json", *sorted(n for n in listing if shard.fullmatch(n))]
    return []


def fetch(repo: str, files: Sequence[str]) -> None:
    """Download ``files`` of ``repo`` into the Hugging Face cache (``HF_HOME``), showing
    huggingface_hub's download progress on stderr (unless ``HF_HUB_DISABLE_PROGRESS_BARS``
    says not to); files already cached are not fetched again."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars

    if are_progress_bars_disabled() and constants.HF_HUB_DISABLE_PROGRESS_BARS is not True:
        enable_progress_bars()  # turned off in this process (transformers does): a download shows
    snapshot_download(repo, allow_patterns=list(files))


def fetch_for_loading(repo: str) -> list[str]:
    """List ``repo`` on the hub and ``fetch`` what loading it with transformers needs.

    Returns the files fetched; a repository without weights transformers can read is a
    ``FileNotFoundError`` naming what it lacks.
    """
    from huggingface_hub import HfApi

    listing = HfApi().list_repo_files(repo)
    files = files_to_load(listing)
    if not files:
        raise FileNotFoundError(
            f"{repo} holds no weights twinrank can load ({WEIGHTS_WORDS}, whole or sharded); "
            f"pass a PyTorch checkpoint's Hugging Face id.")
    fetch(repo, files)
    return files


def cached_weights(repo: str, weights: Sequence[str] = TRANSFORMERS_WEIGHTS) -> str | None:
    """The path of ``repo``'s weights in the local cache (the index for a sharded
    checkpoint, when every shard it names is there too), or None."""
    from huggingface_hub import try_to_load_from_cache

    for name in weights:
        found = try_to_load_from_cache(repo, name)
        if isinstance(found, str):
            return found
        index = try_to_load_from_cache(repo, f"{name}.index.json")
        if isinstance(index, str) and _shards_cached(repo, index):
            return index
    return None


def _shards_cached(repo: str, index: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        with open(index) as handle:
            shards = set(json.load(handle)["weight_map"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return all(isinstance(try_to_load_from_cache(repo, s), str) for s in shards)


def missing_from_cache(repo: str) -> str | None:
    """What the local cache lacks to load ``repo``, in words; None when its weights are
    there.

    >>> missing_from_cache("someone/not-downloaded")  # doctest: +SKIP
    'is not in the Hugging Face cache'
    """
    from huggingface_hub import try_to_load_from_cache

    if cached_weights(repo) is not None:
        return None
    if isinstance(try_to_load_from_cache(repo, "config.json"), str):
        return (f"is only partly in the Hugging Face cache (config.json but no weights: "
                f"{WEIGHTS_WORDS}; an interrupted download)")
    return "is not in the Hugging Face cache"

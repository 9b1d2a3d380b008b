"""Model presets: the names a user should pick, in one table (``twinrank models``).

A preset names a loader source (an open_clip architecture + pretrained tag, a Hugging
Face id behind ``blip:``, or a shipped model folder) and says what the user gets: a
bi-encoder, and a reranker only where one was trained. Quality figures are the published
ones, with their source; none was re-measured here (no weights can be downloaded on the
machines twinrank is built on). Vector and token sizes come from the architectures.

Example:
    >>> preset("blip-base").model
    'blip:Salesforce/blip-itm-base-coco'
    >>> [p.name for p in PRESETS if p.reranker]
    ['blip-base', 'blip-large', 'demo']
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SHIPPED_DEMO = Path(__file__).parent / "demo"


@dataclass(frozen=True)
class Preset:
    """One named model choice and what it brings."""

    name: str
    summary: str
    model: str  # what create_model takes
    pretrained: str | None  # open_clip pretrained tag, when ``model`` is an architecture
    bi_encoder: str
    reranker: str | None  # None: no trained cross-encoder; search shows the bi-encoder order
    image_size: int
    vector_size: int
    token_shape: tuple[int, int]  # cached reranker tokens per image (count, width)
    download: str  # approximate weights download
    licence: str
    quality: str  # the published figure, and where it comes from
    hub_repos: tuple[str, ...] = ()  # what ``twinrank models pull`` fetches
    weights_repo: str = ""  # open_clip's hub repo for ``pretrained`` (its own table says so)

    @property
    def bytes_per_image(self) -> int:
        """Cached reranker tokens per image, float16 (0 when tokens are not cached)."""
        count, width = self.token_shape
        return count * width * 2


PRESETS: tuple[Preset, ...] = (
    Preset(
        "blip-base", "BLIP ITM base (COCO fine-tuned): retrieve with its contrastive head, "
        "rerank with its matching head over tokens cached at ingest",
        "blip:Salesforce/blip-itm-base-coco", None, "BLIP ITC (ViT-B/16, 384 px)",
        "BLIP ITM head over cached image tokens", 384, 256, (577, 768), "~0.9 GB",
        "BSD-3-Clause", "COCO 5k t2i R@1 63.1-64.3, i2t R@1 80.6-81.9 (BLIP, Li et al. 2022, "
        "Table 5, ViT-B, ITC top-k reranked by ITM)",
        ("Salesforce/blip-itm-base-coco",)),
    Preset(
        "blip-large", "BLIP ITM large (COCO fine-tuned): as blip-base with a ViT-L/16 image "
        "tower; about 3x the image compute", "blip:Salesforce/blip-itm-large-coco", None,
        "BLIP ITC (ViT-L/16, 384 px)", "BLIP ITM head over cached image tokens", 384, 256,
        (577, 1024), "~1.8 GB", "BSD-3-Clause",
        "COCO 5k t2i R@1 65.1, i2t R@1 82.4 (BLIP, Li et al. 2022, Table 5, ViT-L)",
        ("Salesforce/blip-itm-large-coco",)),
    Preset(
        "clip-b32", "open_clip ViT-B-32 on LAION-2B: the CPU-friendly bi-encoder (15 GFLOPs "
        "an image, a third of ViT-B-16's)", "ViT-B-32", "laion2b_s34b_b79k",
        "open_clip ViT-B-32 (224 px)", None, 224, 512, (16, 256), "~0.6 GB", "MIT",
        "COCO 5k zero-shot t2i R@1 39.3, i2t R@1 56.3 (open_clip docs, "
        "openclip_retrieval_results.csv)", (), "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"),
    Preset(
        "clip-multilingual", "open_clip XLM-RoBERTa-base + ViT-B-32 on LAION-5B: queries in "
        "about 100 languages", "xlm-roberta-base-ViT-B-32", "laion5b_s13b_b90k",
        "open_clip XLM-R base + ViT-B-32 (224 px)", None, 224, 512, (16, 256), "~1.5 GB",
        "MIT", "COCO 5k zero-shot t2i R@1 37.8, i2t R@1 53.5, English (open_clip docs, "
        "openclip_retrieval_results.csv); other languages in its multilingual table",
        ("xlm-roberta-base",), "laion/CLIP-ViT-B-32-xlm-roberta-base-laion5B-s13B-b90k"),
    Preset(
        "demo", "the shipped demo model, trained here on generated scenes: offline, small, "
        "knows shapes and colours only", str(SHIPPED_DEMO), None,
        "twinrank-scenes (48 px)", "its trained fusion head over cached tokens", 48, 128,
        (36, 128), "shipped (~17 MB)", "Apache-2.0",
        "generated scenes only: see docs/experiments.md (no real-photo quality)", ()),
    Preset(
        "twinrank-tiny", "random weights for tests: results are noise", "twinrank-tiny",
        None, "random tiny open_clip (32 px)", None, 32, 64, (16, 256), "none",
        "Apache-2.0", "none (random)", ()),
)
DEFAULT_PRESET = "blip-base"  # a new store without --model: real weights, a real reranker
_BY_NAME = {p.name: p for p in PRESETS}


def preset(name: str) -> Preset:
    """The preset called ``name``; a ``ValueError`` names the known ones."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"No preset {name!r}; presets: {', '.join(_BY_NAME)} "
                         f"(or blip:HF-ID).") from None


def is_preset(name: str) -> bool:
    return name in _BY_NAME


def resolve(name: str, pretrained: str | None = None) -> tuple[str, str | None]:
    """(loader source, pretrained tag) for a preset name; anything else is passed through.

    >>> resolve("clip-b32")
    ('ViT-B-32', 'laion2b_s34b_b79k')
    >>> resolve("ViT-B-16", "laion2b_s34b_b88k")
    ('ViT-B-16', 'laion2b_s34b_b88k')
    """
    if name in _BY_NAME and pretrained is None:
        chosen = _BY_NAME[name]
        return chosen.model, chosen.pretrained
    return name, pretrained


def missing_weights(name: str) -> str | None:
    """Why preset ``name`` cannot load here (its weights are neither in the Hugging Face
    cache nor downloadable), in one sentence; None when they can load.

    Checked before torch or transformers is imported, so an offline machine hears it in
    about a second instead of after a minute of retries.
    """
    chosen = preset(name)
    repos = list(chosen.hub_repos) if chosen.model.startswith("blip:") else []
    files = ["config.json"]
    if chosen.weights_repo:  # importing open_clip to look it up would cost seconds
        repos = [chosen.weights_repo]
        files = ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    if not repos or all(_cached(repo, files) for repo in repos) or _hub_reachable():
        return None
    return (f"The {name} preset's weights are not in the Hugging Face cache (HF_HOME) and "
            f"the hub is unreachable: run `twinrank models pull {name}` on a connected "
            f"machine and copy its HF_HOME here, or use --model demo for the offline demo.")


def _cached(repo: str, files: list[str]) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo, f), str) for f in files)


def _hub_reachable(timeout: float = 3.0) -> bool:
    import os
    import socket

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def presets_table() -> str:
    """The presets as ``twinrank models`` prints them."""
    lines = []
    for p in PRESETS:
        default = "  (default for a new store)" if p.name == DEFAULT_PRESET else ""
        reranker = p.reranker or "none (bi-encoder order; --reranker blip-itm to add one)"
        cached = (f"{p.bytes_per_image / 1000:,.1f} kB" if p.bytes_per_image else "none")
        lines += [
            f"{p.name}{default}",
            f"  {p.summary}",
            f"  load:       --model {p.name}   (= {p.model}"
            + (f" --pretrained {p.pretrained})" if p.pretrained else ")"),
            f"  bi-encoder: {p.bi_encoder}, {p.vector_size}-d vectors",
            f"  reranker:   {reranker}",
            f"  input {p.image_size} px; cached tokens {p.token_shape[0]} x {p.token_shape[1]}"
            f" = {cached} per image; download {p.download}; licence {p.licence}",
            f"  published:  {p.quality} — not re-measured here",
            "",
        ]
    lines.append("Also: any open_clip name (--model ViT-B-16 --pretrained TAG), "
                 "blip:HF_ID_OR_FOLDER, or a model folder from twinrank train.")
    return "\n".join(lines)


def pull(name: str) -> list[str]:
    """Download a preset's weights into the Hugging Face cache (``HF_HOME``) and nothing
    else, so a machine without internet can use them (copy the cache over).

    Returns the repositories fetched. Offline, one ``ConnectionError`` sentence.
    """
    from huggingface_hub import snapshot_download

    weights = ["*.json", "*.txt", "model.safetensors"]
    if name.startswith("blip:"):  # any BLIP ITM checkpoint by its Hugging Face id
        chosen = Preset(name, "", name, None, "", None, 0, 0, (0, 0), "", "", "",
                        (name.removeprefix("blip:"),))
    else:
        chosen = preset(name)
    jobs: list[tuple[str, list[str]]] = []
    if chosen.weights_repo:  # open_clip: its hub repo for this tag, weights + config only
        jobs.append((chosen.weights_repo,
                     ["open_clip_model.safetensors", "open_clip_config.json"]))
    for repo in chosen.hub_repos:
        tokenizer_only = chosen.pretrained is not None  # the text model's tokenizer files
        jobs.append((repo, ["*.json", "*.txt", "*.model"] if tokenizer_only else weights))
    if not jobs:
        return []
    fetched = []
    for repo, patterns in jobs:
        try:
            snapshot_download(repo, allow_patterns=patterns)
        except Exception as error:  # hub errors come in many classes; all mean "not fetched"
            raise ConnectionError(
                f"Could not download {repo} for preset {name!r} ({type(error).__name__}); "
                f"run this on a machine that reaches huggingface.co, then copy its HF_HOME "
                f"cache here.") from error
        fetched.append(repo)
    return fetched

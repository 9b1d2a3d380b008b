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

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
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
    faster_on_cpu: str = ""  # the preset an ingest that would take long on a CPU suggests

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
        "Table 5, ViT-B: ITC top 256 reranked by ITM logit + ITC cosine with [ENC] first, "
        "as twinrank scores; twinrank reranks the top 20 by default)",
        ("Salesforce/blip-itm-base-coco",), faster_on_cpu="clip-b32"),
    Preset(
        "blip-large", "BLIP ITM large (COCO fine-tuned): as blip-base with a ViT-L/16 image "
        "tower; about 3x the image compute", "blip:Salesforce/blip-itm-large-coco", None,
        "BLIP ITC (ViT-L/16, 384 px)", "BLIP ITM head over cached image tokens", 384, 256,
        (577, 1024), "~1.8 GB", "BSD-3-Clause",
        "COCO 5k t2i R@1 65.1, i2t R@1 82.4 (BLIP, Li et al. 2022, Table 5, ViT-L; same "
        "recipe and k as blip-base)",
        ("Salesforce/blip-itm-large-coco",), faster_on_cpu="clip-b32"),
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


def preset_for(source: str, pretrained: str | None) -> Preset | None:
    """The preset whose loader is ``source`` / ``pretrained`` (what a collection records),
    or None.

    >>> preset_for("ViT-B-32", "laion2b_s34b_b79k").name
    'clip-b32'
    """
    return next((p for p in PRESETS if (p.model, p.pretrained) == (source, pretrained)), None)


def missing_weights(name: str) -> str | None:
    """Why preset ``name`` cannot load here (its weights are neither in the Hugging Face
    cache nor downloadable), in one sentence; None when they can load.

    Checked before torch or transformers is imported, so an offline machine hears it in
    about a second instead of after a minute of retries. The weights decide: a cache
    holding a ``config.json`` alone is an interrupted download, and is said to be one.
    """
    import twinrank.models.hub_files as hub_files

    chosen = preset(name)
    if chosen.weights_repo:  # importing open_clip to look it up would cost seconds
        needed = [(chosen.weights_repo, hub_files.OPEN_CLIP_WEIGHTS)]
    elif chosen.model.startswith("blip:"):
        needed = [(repo, hub_files.TRANSFORMERS_WEIGHTS) for repo in chosen.hub_repos]
    else:
        needed = []
    absent = [(repo, names) for repo, names in needed
              if hub_files.cached_weights(repo, names) is None]
    if not absent or _hub_reachable():
        return None
    repo, names = absent[0]
    partial = (", only its config, from an interrupted download"
               if _cached(repo, ["config.json", *hub_files.OPEN_CLIP_SUPPORT]) else "")
    return (f"The {name} preset's weights ({' or '.join(names)} of {repo}) are not in the "
            f"Hugging Face cache (HF_HOME{partial}) and the hub is unreachable: run "
            f"`twinrank models pull {name}` on a connected machine and copy its HF_HOME "
            f"here, or use --model demo for the offline demo.")


def _cached(repo: str, files: list[str]) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo, f), str) for f in files)


def _hub_reachable(timeout: float = 3.0) -> bool:
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


PROVE_SCRIPT = """\
import sys
from twinrank.models import create_model
from twinrank.models.factory import ModelLoadError
try:
    create_model(sys.argv[1], device="cpu")
except (ModelLoadError, OSError, ValueError) as error:
    print(" ".join(str(error).split()), file=sys.stderr)
    sys.exit(3)
"""


def pull(name: str) -> dict[str, list[str]]:
    """Download what loading preset ``name`` (or ``blip:HF_ID``) reads into the Hugging
    Face cache (``HF_HOME``), whichever file holds its weights, then prove it loads with
    the hub disabled, so a machine without internet can use it (copy the cache over).

    Returns the files fetched per repository (empty for a preset with nothing to fetch).
    Offline, one ``ConnectionError`` sentence; files missing after the download, or a
    checkpoint that does not load offline, one ``FileNotFoundError`` sentence.
    """
    from huggingface_hub import HfApi

    import twinrank.models.hub_files as hub_files

    fetched: dict[str, list[str]] = {}
    for repo, choose, wanted in _pull_jobs(name):
        try:
            files = choose(HfApi().list_repo_files(repo))
            if files:
                hub_files.fetch(repo, files)
        except Exception as error:  # hub errors come in many classes; all mean "not fetched"
            raise ConnectionError(
                f"Could not download {repo} for {name!r} ({type(error).__name__}); run this "
                f"on a machine that reaches huggingface.co, then copy its HF_HOME cache "
                f"here.") from error
        if not files:
            raise FileNotFoundError(f"{repo} holds no {wanted}, so {name!r} cannot load from "
                                    f"it; nothing was downloaded.")
        lost = [f for f in files if not _cached(repo, [f])]
        if lost:
            raise FileNotFoundError(
                f"{', '.join(lost)} of {repo} did not arrive in the Hugging Face cache "
                f"(HF_HOME); run `twinrank models pull {name}` again (it fetches only what "
                f"is missing).")
        fetched[repo] = files
    if fetched:
        weights = [f for files in fetched.values() for f in files
                   if f.endswith((".safetensors", ".bin"))]
        prove_loads_offline(name, weights)
    return fetched


def _pull_jobs(name: str) -> list[tuple[str, Callable[[Sequence[str]], list[str]], str]]:
    """(repository, which of its files loading reads, what those are in words) per repo."""
    import twinrank.models.hub_files as hub_files

    weights_words = f"weights twinrank can load ({hub_files.WEIGHTS_WORDS}, whole or sharded)"
    if name.startswith("blip:"):  # any BLIP ITM checkpoint by its Hugging Face id
        repo = name.removeprefix("blip:")
        if repo.startswith(("/", ".", "~")) or repo.count("/") != 1:
            raise ValueError(f"`models pull` takes a preset or blip:HF-ID, and {repo!r} is not "
                             f"a Hugging Face id (like {preset('blip-base').hub_repos[0]!r}).")
        return [(repo, hub_files.files_to_load, weights_words)]
    chosen = preset(name)
    jobs: list[tuple[str, Callable[[Sequence[str]], list[str]], str]] = []
    if chosen.weights_repo:  # open_clip: its hub repo for this tag, its weights + config only
        jobs.append((chosen.weights_repo,
                     lambda listing: hub_files.files_to_load(
                         listing, hub_files.OPEN_CLIP_WEIGHTS, hub_files.OPEN_CLIP_SUPPORT),
                     f"open_clip weights ({' or '.join(hub_files.OPEN_CLIP_WEIGHTS)})"))
    for repo in chosen.hub_repos:
        if chosen.pretrained is not None:  # the text model's config and tokenizer files
            jobs.append((repo, hub_files.tokenizer_files, "config or tokenizer files"))
        else:
            jobs.append((repo, hub_files.files_to_load, weights_words))
    return jobs


def prove_loads_offline(name: str, weights: Sequence[str] = (), timeout: float = 900.0) -> None:
    """Load ``name`` as ``create_model`` does, in a fresh process with the hub disabled
    (``HF_HUB_OFFLINE=1``, the cache this process downloaded into): what ``pull``
    fetched is all loading needs, or one ``FileNotFoundError`` sentence names the
    ``weights`` files and says what failed.
    """
    from huggingface_hub import constants

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": constants.HF_HUB_CACHE}
    done = subprocess.run([sys.executable, "-c", PROVE_SCRIPT, name], capture_output=True,
                          text=True, env=env, timeout=timeout, check=False)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        why = lines[-1] if lines else f"exit code {done.returncode}"
        files = f" ({', '.join(weights)} and the rest)" if weights else ""
        raise FileNotFoundError(f"{name}'s files{files} are in the Hugging Face cache, but it "
                                f"does not load with the hub disabled: {why.rstrip('.')}.")

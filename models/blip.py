"""BLIP as a jointly trained retrieve-and-rerank model (the paper's JOIN+CO, downloadable).

``BlipForImageTextRetrieval`` holds both halves over one vision transformer: its
contrastive head (ITC: ``vision_proj`` of the image CLS, ``text_proj`` of the text CLS) is
the bi-encoder, its image-text matching head (ITM: the text encoder cross-attending to the
image's token states) the cross-encoder. ``BlipTwinModel`` gives it the surface every
twinrank model family has, so ingest, the store, search and the cached-token reranker run
it unchanged: one vision forward per image yields the dense vector *and* the token states
the ITM head reads, so a rerank never re-reads an image.

Example:
    >>> model = create_model("blip:Salesforce/blip-itm-base-coco")  # doctest: +SKIP
    >>> image = model.encode_image(model.preprocess_images([photo]))  # doctest: +SKIP
    >>> image.image_vector.shape, image.image_tokens.shape  # doctest: +SKIP
    (torch.Size([1, 256]), torch.Size([1, 577, 768]))
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from twinrank.models.evidence import BLIP_PUBLISHED, Evidence, read_evidence
from twinrank.models.factory import BLIP_MARKER_FILE, ModelLoadError, hub_reachable
from twinrank.models.twin import ImageEncoding, TextEncoding

BLIP_PREFIX = "blip:"
MARKER_FILE = BLIP_MARKER_FILE  # what twinrank adds to a BLIP folder it saves
WEIGHTS_FILE = "model.safetensors"
DEFAULT_BLIP = "Salesforce/blip-itm-base-coco"
ITC_TEMPERATURE = 0.07  # BLIP's initial contrastive temperature (learned when fine-tuning)
# BLIP's retrieval score (``train_retrieval.py``'s evaluation): ITM match logit + ITC cosine.
ITC_WEIGHT = 1.0
ENC_TOKEN = "[ENC]"  # BLIP adds "[DEC]" (bos) then "[ENC]" to bert-base-uncased
DEC_TOKEN = "[DEC]"


class BlipTwinModel(nn.Module):
    """``BlipForImageTextRetrieval`` + its ``BlipProcessor`` as a twinrank model family.

    ``text_tokens`` are token ids (B, L): the ITM side re-runs the text encoder with
    cross-attention, so it needs ids, not states.
    """

    family = "blip"

    def __init__(self, retrieval: Any, processor: Any, source: str, model_id: str,
                 reranker_trained: bool = True, logit_scale: float | None = None) -> None:
        super().__init__()
        self.retrieval = retrieval
        self.processor = processor
        self._source = source
        self._model_id = model_id
        self._reranker_trained = reranker_trained
        scale = math.log(1 / ITC_TEMPERATURE) if logit_scale is None else logit_scale
        self.logit_scale = nn.Parameter(torch.tensor(float(scale)))
        self.preprocess = blip_transform(processor.image_processor)
        self.enc_token_id = enc_token_id(processor.tokenizer,
                                         int(retrieval.config.text_config.vocab_size))
        # A folder measured here (twinrank train / evaluate --record) carries its own
        # evidence; otherwise BLIP's authors' published evaluation of the reranked recipe.
        self.reranker_evidence: Evidence | None = BLIP_PUBLISHED

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
    def reranker_trained(self) -> bool:
        return self._reranker_trained

    @property
    def bi_weight(self) -> float:
        """The weight of the ITC cosine in the rerank score (BLIP's own recipe: 1, unless
        a validation split measured here chose another)."""
        evidence = self.reranker_evidence
        return evidence.bi_weight if evidence is not None and not evidence.published \
            else ITC_WEIGHT

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def image_size(self) -> int:
        return int(self.retrieval.config.vision_config.image_size)

    @property
    def vector_size(self) -> int:
        return int(self.retrieval.config.image_text_hidden_size)

    @property
    def token_shape(self) -> tuple[int, int]:
        """Cached tokens per image: the class token + one per patch, vision width."""
        vision = self.retrieval.config.vision_config
        return (vision.image_size // vision.patch_size) ** 2 + 1, int(vision.hidden_size)

    @property
    def max_text_length(self) -> int:
        limit = int(self.retrieval.config.text_config.max_position_embeddings)
        return min(limit, int(getattr(self.processor.tokenizer, "model_max_length", limit)))

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids (B, L) as ``BlipProcessor`` makes them, padded to the longest text."""
        encoded = self.processor.tokenizer(list(texts), padding="longest", truncation=True,
                                           max_length=self.max_text_length,
                                           return_tensors="pt")
        ids: torch.Tensor = encoded["input_ids"]
        return ids

    def preprocess_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Pixels (B, 3, H, W) equal to ``BlipProcessor``'s ``pixel_values``."""
        return torch.stack([self.preprocess(image) for image in images])

    def early_parameters(self, count: int) -> list[nn.Parameter]:
        """The embeddings and first ``count`` layers of both towers (``--freeze-layers``)."""
        vision, text = self.retrieval.vision_model, self.retrieval.text_encoder
        parts = [vision.embeddings, text.embeddings, *list(vision.encoder.layers)[:count],
                 *list(text.encoder.layer)[:count]]
        return [p for part in parts for p in part.parameters()]

    def image_modules(self) -> list[nn.Module]:
        return [self.retrieval.vision_model, self.retrieval.vision_proj]

    def encode_image(self, pixels: torch.Tensor) -> ImageEncoding:
        """One vision forward: the ITC vector (B, D) and the token states (B, T, W)."""
        states = self.retrieval.vision_model(pixel_values=pixels).last_hidden_state
        vector = self.retrieval.vision_proj(states[:, 0, :])  # (B, D)
        return ImageEncoding(image_vector=F.normalize(vector, dim=-1), image_tokens=states)

    def encode_text(self, ids: torch.Tensor) -> TextEncoding:
        """The ITC vector of the unimodal text encoder's CLS; the ids serve the ITM side."""
        ids = ids.to(self.device)
        mask = ids != self.pad_id  # (B, L)
        states = self.retrieval.text_encoder(input_ids=ids,
                                             attention_mask=mask.long()).last_hidden_state
        vector = self.retrieval.text_proj(states[:, 0, :])  # (B, D)
        return TextEncoding(text_vector=F.normalize(vector, dim=-1), text_tokens=ids,
                            text_mask=mask)

    def itm_logits(self, text_tokens: torch.Tensor, text_mask: torch.Tensor,
                   image_tokens: torch.Tensor) -> torch.Tensor:
        """ITM logits (B, 2) as BLIP's authors compute them: the image-grounded text
        encoder reads ``[ENC]`` in place of the first token (transformers' own forward
        keeps ``[CLS]`` there), cross-attending to the image's token states."""
        image_tokens = image_tokens.to(next(self.retrieval.text_encoder.parameters()).dtype)
        image_mask = torch.ones(image_tokens.shape[:-1], dtype=torch.long,
                                device=image_tokens.device)
        ids = with_enc_token(text_tokens, self.enc_token_id)
        states = self.retrieval.text_encoder(
            input_ids=ids, attention_mask=text_mask.long(),
            encoder_hidden_states=image_tokens, encoder_attention_mask=image_mask,
        ).last_hidden_state
        logits: torch.Tensor = self.retrieval.itm_head(states[:, 0, :])  # (B, 2)
        return logits

    def match_logit(self, text_tokens: torch.Tensor, text_mask: torch.Tensor,
                    image_tokens: torch.Tensor) -> torch.Tensor:
        """ITM log-odds logit[1] - logit[0] (B,): the binary logit the match loss trains
        (the same objective as BLIP's two-way cross-entropy)."""
        logits = self.itm_logits(text_tokens, text_mask, image_tokens)
        return logits[:, 1] - logits[:, 0]

    def rerank_logit(self, text_tokens: torch.Tensor, text_mask: torch.Tensor,
                     image_tokens: torch.Tensor) -> torch.Tensor:
        """ITM logit[1] (B,), what BLIP's retrieval evaluation ranks by (plus the ITC
        cosine, ``bi_weight``)."""
        return self.itm_logits(text_tokens, text_mask, image_tokens)[:, 1]

    @property
    def pad_id(self) -> int:
        pad = self.processor.tokenizer.pad_token_id
        return int(pad) if pad is not None else 0

    def save(self, folder: str | Path, dtype: torch.dtype | None = None,
             reranker_trained: bool | None = None) -> Path:
        """A folder that loads with ``create_model("blip:FOLDER")`` (or the folder alone):
        ``save_pretrained`` of model and processor, plus twinrank's marker file."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        retrieval = self.retrieval
        if dtype is not None:
            retrieval = copy.deepcopy(retrieval).to(dtype)
        with _quiet_progress():
            retrieval.save_pretrained(folder)
            self.processor.save_pretrained(folder)
        trained = self.reranker_trained if reranker_trained is None else reranker_trained
        marker = {"family": self.family,
                  "model_id": f"blip:{folder.name}@{_weights_digest(folder)}",
                  "reranker_trained": trained, "logit_scale": float(self.logit_scale.detach())}
        (folder / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")
        return folder


def enc_token_id(tokenizer: Any, vocab_size: int) -> int:
    """The id of ``[ENC]``, found as BLIP's own code defines it: ``bert-base-uncased``
    plus ``[DEC]`` (bos) then ``[ENC]`` (an additional special token), so 30523 in a
    30524-word vocabulary. A tokenizer that already holds ``[ENC]`` (twinrank's random
    test folders) gives its own id; Hugging Face's BLIP tokenizers hold ``[DEC]`` at most.

    Example:
        >>> from transformers import BertTokenizer  # doctest: +SKIP
        >>> bert = BertTokenizer.from_pretrained("bert-base-uncased")  # doctest: +SKIP
        >>> enc_token_id(bert, 30524)  # doctest: +SKIP
        30523
    """
    vocab = tokenizer.get_vocab()
    if ENC_TOKEN in vocab:
        found = int(vocab[ENC_TOKEN])
    else:
        base = int(tokenizer.vocab_size)  # the WordPiece file, without added tokens
        dec = vocab.get(DEC_TOKEN)
        found = (base if dec is None else max(base, int(dec) + 1)) + (1 if dec is None else 0)
    if not 0 <= found < vocab_size:
        raise ModelLoadError(
            f"This BLIP checkpoint's text vocabulary ({vocab_size} words) has no room for "
            f"BLIP's [ENC] token (id {found}); pass a BLIP ITM checkpoint such as "
            f"{DEFAULT_BLIP!r}.")
    return found


def with_enc_token(ids: torch.Tensor, enc_id: int) -> torch.Tensor:
    """``ids`` (B, L) with ``[ENC]`` in place of the first token (``[CLS]``)."""
    ids = ids.clone()
    ids[:, 0] = enc_id
    return ids


def load_blip(source: str, device: torch.device | str | None = None) -> BlipTwinModel:
    """A BLIP model from ``blip:HF_ID``, ``blip:FOLDER`` or a BLIP folder twinrank saved.

    Weights come from the Hugging Face cache (``HF_HOME``; ``HF_HUB_OFFLINE`` respected);
    offline and not cached, one sentence within seconds says how to get them.
    """
    name = source[len(BLIP_PREFIX):] if source.startswith(BLIP_PREFIX) else source
    folder = Path(name).expanduser()
    if folder.is_dir():
        retrieval, processor = load_blip_itm(str(folder))
        marker = _read_marker(folder)
        model_id = marker.get("model_id") or f"blip:{folder.name}@{_weights_digest(folder)}"
        model = BlipTwinModel(retrieval, processor, f"{BLIP_PREFIX}{folder.resolve()}",
                              model_id, bool(marker.get("reranker_trained", True)),
                              marker.get("logit_scale"))
        model.reranker_evidence = read_evidence(folder) or BLIP_PUBLISHED
    else:
        retrieval, processor = load_blip_itm(name)
        model = BlipTwinModel(retrieval, processor, f"{BLIP_PREFIX}{name}",
                              f"blip:{name}@{_hub_revision(name)}")
    return model.to(device or "cpu").eval()


def load_blip_itm(source: str, pull_name: str | None = None) -> tuple[Any, Any]:
    """``BlipForImageTextRetrieval`` and ``BlipProcessor`` from a Hugging Face id or a
    folder, or one clear sentence (``ModelLoadError``) when they cannot be had.

    A hub id whose weights are cached loads from the cache alone. Otherwise, with the hub
    reachable, what loading needs is downloaded first (``hub_files.fetch_for_loading``,
    download progress on stderr), the rest of an interrupted download included; offline,
    one sentence names what is missing and the ``models pull`` command, at once (before
    transformers is imported) instead of after ~25 s of retries.
    """
    import twinrank.models.hub_files as hub_files

    folder = Path(source).expanduser()
    if folder.is_dir():
        source = str(folder)
    elif source.startswith(("/", ".", "~")) or source.count("/") != 1:
        raise ModelLoadError(
            f"BLIP model {source!r} is neither a model folder nor a Hugging Face id; pass an "
            f"existing folder or an id like {DEFAULT_BLIP!r}.")
    pull = f"twinrank models pull {pull_name or BLIP_PREFIX + source}"
    fetch = not folder.is_dir() and not in_hub_cache(source)
    for last_try in (False, True):
        if fetch and not hub_reachable():
            missing = hub_files.missing_from_cache(source) or "is not fully in the cache"
            raise ModelLoadError(
                f"BLIP model {source!r} {missing} and the hub is unreachable: run `{pull}` on "
                f"a connected machine and copy its HF_HOME here, or use --model demo for the "
                f"offline demo.")
        try:
            if fetch:
                hub_files.fetch_for_loading(source)
        except FileNotFoundError as error:  # the repo holds no weights we can read
            raise ModelLoadError(str(error)) from error
        except Exception as error:  # hub errors come in many classes; all mean "not fetched"
            raise ModelLoadError(
                f"Could not download BLIP model {source!r} ({type(error).__name__}: {error}); "
                f"check the id, or run `{pull}` again later.") from error
        from transformers import BlipForImageTextRetrieval, BlipProcessor

        try:
            with _quiet_progress():
                model = BlipForImageTextRetrieval.from_pretrained(source, local_files_only=True)
                processor = BlipProcessor.from_pretrained(source, local_files_only=True)
            return model.eval(), processor
        except Exception as error:  # transformers raises many kinds; all mean "could not load"
            if last_try or fetch or folder.is_dir() or not hub_reachable():
                raise ModelLoadError(
                    f"Could not load the BLIP model {source!r} ({type(error).__name__}: "
                    f"{error}); pass a BLIP ITM checkpoint such as {DEFAULT_BLIP!r} or its "
                    f"folder.") from error
            fetch = True  # weights cached but a small file not (an interrupted download)
    raise AssertionError("unreachable: the second try returns or raises")


def in_hub_cache(repo_id: str) -> bool:
    """Whether ``repo_id``'s weights are in the local Hugging Face cache (a ``config.json``
    alone is what an interrupted download leaves)."""
    from twinrank.models.hub_files import cached_weights

    return cached_weights(repo_id) is not None


class TorchvisionResize:
    """The torchvision-backend ``BlipImageProcessor`` resize as a PIL -> PIL step: the same
    ``resize`` call on the same uint8 tensor, so the pixels are identical."""

    def __init__(self, size: tuple[int, int], interpolation: Any) -> None:
        self.size, self.interpolation = size, interpolation

    def __call__(self, image: Image.Image) -> Image.Image:
        from torchvision.transforms.v2 import functional as tvF

        tensor = tvF.pil_to_tensor(image.convert("RGB"))  # (3, H, W) uint8
        resized = tvF.resize(tensor, list(self.size), interpolation=self.interpolation,
                             antialias=True)
        return Image.fromarray(resized.permute(1, 2, 0).contiguous().numpy())

    def __repr__(self) -> str:
        return f"TorchvisionResize(size={self.size}, interpolation={self.interpolation})"


def blip_transform(image_processor: Any) -> Any:
    """``image_processor``'s steps as a torchvision Compose of PIL steps, ToTensor and
    Normalize, so ingest can resize on its decode workers and normalise per batch."""
    from torchvision import transforms as T
    from torchvision.transforms.v2 import functional as tvF

    size = image_processor.size
    height, width = int(size["height"]), int(size["width"])
    resample = int(image_processor.resample)  # PIL's code, as the processor stores it
    if "Pil" in type(image_processor).__name__:  # the PIL backend resizes with PIL
        resize: Any = T.Resize((height, width), interpolation=T.InterpolationMode(
            _PIL_TO_MODE[resample]))
    else:
        resize = TorchvisionResize((height, width), tvF.InterpolationMode(_PIL_TO_MODE[resample]))
    return T.Compose([_to_rgb, resize, T.ToTensor(),
                      T.Normalize(list(image_processor.image_mean),
                                  list(image_processor.image_std))])


_PIL_TO_MODE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def _to_rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def _read_marker(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _weights_digest(folder: Path) -> str:
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    digest = hashlib.sha256()
    for path in files:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:12]


def _hub_revision(repo_id: str) -> str:
    """The cached snapshot's commit (the folder name under ``snapshots/`` that holds the
    weights), or "hub"."""
    from twinrank.models.hub_files import cached_weights

    found = cached_weights(repo_id)
    return Path(found).parent.name[:12] if found is not None else "hub"


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """No "Loading weights" progress bar in the CLI's output, while a download still
    shows huggingface_hub's (on stderr): transformers' switch turns off both."""
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    downloads_shown = not are_progress_bars_disabled()
    hf_logging.disable_progress_bar()
    if downloads_shown:
        enable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()

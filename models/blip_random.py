"""Randomly initialised BLIP folders of a real architecture, with no download.

Tests and benchmarks need a ``blip:FOLDER`` that loads exactly as a downloaded checkpoint
does (``save_pretrained`` of ``BlipForImageTextRetrieval`` + ``BlipProcessor``), but no
weights can be fetched here. The compute of random weights is the same as of real ones;
the scores are meaningless.

Example:
    >>> folder = save_random_blip(tmp_path / "blip-tiny", "tiny")  # doctest: +SKIP
    >>> model = create_model(f"blip:{folder}")  # doctest: +SKIP
"""

from __future__ import annotations

import string
import tempfile
from pathlib import Path
from typing import Any

import torch

# BERT's special token ids (as bert-base-uncased, which BLIP's tokenizer extends).
SPECIAL_TOKENS = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]"}
BLIP_VOCAB_SIZE = 30524  # bert-base-uncased + BLIP's [DEC] and [ENC]
WORDS = ("a an the of on in left right above below and with dog cat beach red blue green "
         "circle square triangle small big photo picture man woman").split()

# The sizes of the published checkpoints (Salesforce/blip-itm-{base,large}-coco).
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"vision": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, image_size=32, patch_size=8),
             "text": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=2, max_position_embeddings=64),
             "projection": 16},
    # tiny widths at the published checkpoints' input size: pictures resized as theirs are
    "tiny-384": {"vision": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=2, image_size=384, patch_size=32),
                 "text": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, max_position_embeddings=64),
                 "projection": 16},
    "base": {"vision": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                            num_attention_heads=12, image_size=384, patch_size=16),
             "text": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                          num_attention_heads=12, max_position_embeddings=512),
             "projection": 256},
    "large": {"vision": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                             num_attention_heads=16, image_size=384, patch_size=16),
              "text": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                           num_attention_heads=12, max_position_embeddings=512),
              "projection": 256},
}


def write_vocab(path: Path) -> dict[str, int]:
    """A WordPiece vocabulary of BLIP's size whose special tokens sit at BERT's ids and
    which can spell any lower-case ASCII text (letters and ``##`` letters)."""
    pieces = list(WORDS) + list(string.ascii_lowercase + string.digits + string.punctuation)
    pieces += [f"##{c}" for c in string.ascii_lowercase + string.digits]
    vocab = [f"[unused{i}]" for i in range(BLIP_VOCAB_SIZE)]
    for index, token in SPECIAL_TOKENS.items():
        vocab[index] = token
    free = (i for i in range(1000, BLIP_VOCAB_SIZE))
    for piece in pieces:
        vocab[next(free)] = piece
    vocab[BLIP_VOCAB_SIZE - 2], vocab[BLIP_VOCAB_SIZE - 1] = "[DEC]", "[ENC]"
    path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return {token: index for index, token in enumerate(vocab)}


def random_blip(size: str = "tiny", seed: int = 0, init_std: float | None = None,
                folder: Path | None = None) -> tuple[Any, Any]:
    """A random ``BlipForImageTextRetrieval`` of ``size`` (tiny, base, large) and its
    ``BlipProcessor``, in memory (the vocabulary file goes to ``folder``, else a temp dir).

    ``init_std`` redraws every matrix with that spread: BERT's 0.02 leaves a tiny model's
    scores nearly blind to the picture, and a test needs pictures to matter."""
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForImageTextRetrieval,
        BlipImageProcessor,
        BlipProcessor,
    )

    spec = SIZES[size]
    vision = spec["vision"]
    text = dict(spec["text"], vocab_size=BLIP_VOCAB_SIZE,
                encoder_hidden_size=vision["hidden_size"])
    config = BlipConfig(vision_config=vision, text_config=text,
                        image_text_hidden_size=spec["projection"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BlipForImageTextRetrieval(config).eval()
        if init_std is not None:
            with torch.no_grad():
                for parameter in model.parameters():
                    if parameter.ndim > 1:
                        parameter.normal_(0.0, init_std)
    folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="blip-vocab"))
    vocab = write_vocab(folder / "vocab.txt")  # transformers 5 takes the vocabulary itself
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=512)
    side = vision["image_size"]
    processor = BlipProcessor(BlipImageProcessor(size={"height": side, "width": side}),
                              tokenizer)
    return model, processor


def save_random_blip(folder: str | Path, size: str = "tiny", seed: int = 0,
                     init_std: float | None = None) -> Path:
    """Write ``random_blip(size, seed, init_std)`` into ``folder`` as ``save_pretrained``
    does; ``create_model(f"blip:{folder}")`` loads it."""
    from twinrank.models.blip import _quiet_progress

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model, processor = random_blip(size, seed, init_std, folder)
    with _quiet_progress():
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
    return folder

"""CLIP's byte-pair tokenizer without torch, for the fast query path.

The same algorithm and vocabulary as open_clip's ``SimpleTokenizer`` (itself copied from
OpenAI's CLIP, MIT License, Copyright (c) 2021 OpenAI) with its default lower-case
cleaning; it returns numpy ids instead of a torch tensor, so a search that runs the text
tower in ONNX Runtime never imports torch. ``tests/test_fast_path.py`` checks it gives
open_clip's ids.

Example:
    >>> tokenizer = ClipBpe(Path("store/fast/bpe_simple_vocab_16e6.txt.gz"), 77)
    >>> tokenizer(["a red circle"])[0, :5]
    array([49406,   320,   736,  7117, 49407])
"""

from __future__ import annotations

import gzip
import html
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import regex

from twinrank.display import warn_query_cut

MERGES = 49152 - 256 - 2  # merges CLIP's vocabulary uses (the file has more)
SPECIAL = ("<start_of_text>", "<end_of_text>")


@lru_cache
def bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible map from utf-8 bytes to printable characters."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    codes = kept[:]
    extra = 0
    for byte in range(256):
        if byte not in kept:
            kept.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(kept, (chr(c) for c in codes), strict=True))


def clean(text: str) -> str:
    """open_clip's ``lower`` cleaning: fix mojibake, unescape HTML twice, squeeze spaces.

    ftfy (a tenth of a second to import) runs only on text it could change: printable
    ASCII without ``&`` has no mojibake, HTML entity, control character or terminal escape
    for it to fix, and that is almost every query.
    """
    if not (text.isascii() and text.isprintable() and "&" not in text):
        import ftfy

        text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return " ".join(text.split()).strip().lower()


class ClipBpe:
    """Texts -> token ids (B, context_length) int64, padded with 0, like open_clip's."""

    def __init__(self, vocab_file: Path, context_length: int) -> None:
        # Only the merges CLIP uses are read (a fifth of the file), and each merge line,
        # "first second", is its own key in ranks, built in C (dict(zip)) rather than as
        # pairs of strings: together half of a cold search's tokenizer set-up.
        merges = _read_lines(vocab_file, MERGES + 1)[1:]
        vocab = list(bytes_to_unicode().values())
        vocab += [v + "</w>" for v in vocab] + [m.replace(" ", "") for m in merges]
        vocab += SPECIAL
        self.encoder = dict(zip(vocab, range(len(vocab)), strict=True))
        self.ranks = dict(zip(merges, range(len(merges)), strict=True))
        self.byte_encoder = bytes_to_unicode()
        self.cache = {t: t for t in SPECIAL}
        self.pattern = regex.compile(
            "|".join(SPECIAL) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE)
        self.sot, self.eot = self.encoder[SPECIAL[0]], self.encoder[SPECIAL[1]]
        self.context_length = context_length

    def bpe(self, token: str) -> str:
        if token in self.cache:
            return self.cache[token]
        word = (*token[:-1], token[-1] + "</w>")
        while len(word) > 1:
            pairs = {f"{a} {b}" for a, b in zip(word, word[1:], strict=False)}
            best = min(pairs, key=lambda pair: self.ranks.get(pair, MERGES))
            if best not in self.ranks:
                break
            first, second = best.split(" ")
            word = _merge(word, (first, second))
        joined = " ".join(word)
        self.cache[token] = joined
        return joined

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for token in self.pattern.findall(clean(text)):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[part] for part in self.bpe(token).split(" "))
        return ids

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [self.sot, *self.encode(text), self.eot]
            if len(ids) > self.context_length:
                warn_query_cut(self.context_length)
                ids = ids[: self.context_length]
                ids[-1] = self.eot
            out[row, : len(ids)] = ids
        return out


def _read_lines(gz_file: Path, count: int) -> list[str]:
    """The first ``count`` lines of a gzipped UTF-8 text file, decompressing no further."""
    data = b""
    with gzip.open(gz_file) as stream:
        while data.count(b"\n") < count and (chunk := stream.read(1 << 18)):
            data += chunk
    whole = b"\n".join(data.split(b"\n", count)[:count])  # whole lines: no character cut
    return whole.decode("utf-8").split("\n")


def _merge(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    first, second = pair
    merged: list[str] = []
    i = 0
    while i < len(word):
        if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
            merged.append(first + second)
            i += 2
        else:
            merged.append(word[i])
            i += 1
    return tuple(merged)

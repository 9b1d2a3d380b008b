"""Device choice in one place: CUDA when present, CPU otherwise, ``--device`` overrides."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def pick_device(device: str | None = None) -> torch.device:
    """The device to run on: ``device`` if given ("cpu", "cuda", "cuda:1"), else the best one.

    Example:
        >>> pick_device("cpu")
        device(type='cpu')
    """
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    chosen = torch.device(str(device))
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"Device {device!r} was asked for but CUDA is not available; use 'cpu'.")
    return chosen


def inference_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    """The compute dtype for inference: fp16 on CUDA, fp32 on CPU unless asked otherwise.

    ``precision`` is "auto", "fp32", "bf16" or "fp16". On CPU, bf16 pays off only on CPUs
    with native bf16 support (measured ~2x on avx512_bf16), so "auto" keeps fp32 there.
    """
    table = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision != "auto":
        if precision not in table:
            raise ValueError(f"Unknown precision {precision!r}; use auto, fp32, bf16 or fp16.")
        return table[precision]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Mixed precision where it helps (CUDA, half dtypes); a no-op otherwise."""
    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        with torch.autocast("cuda", dtype=dtype):
            yield
    else:
        yield

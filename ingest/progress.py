"""The ingest's progress: the bar, and on a CPU one line after the first batch with the
rate and the time left, naming a faster preset when the wait would be long.

A BLIP-base ingest on a 2-core CPU runs at about half an image a second: hours for a
photo library. The bar's own estimate is noise until batches have passed, so the first
written batch gives one plain line instead (on stderr, like the bar).

Example:
    >>> progress = IngestProgress(total=100, enabled=False)
    >>> progress.model_ready(on_cpu=True)
    >>> progress.advance(embedded=0)
    >>> progress.close()
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

from tqdm import tqdm

from twinrank.models.presets import preset_for

SLOW_INGEST_S = 30 * 60  # an estimate past this names the faster preset, if there is one


def clock() -> float:
    """Seconds, for rates (a test replaces it to stand for a slow machine)."""
    return time.perf_counter()


@dataclass
class IngestProgress:
    """The bar over the files to read, plus the first batch's estimate on a CPU."""

    total: int
    enabled: bool = True
    faster: str = ""  # the preset to suggest when the estimate passes SLOW_INGEST_S
    bar: tqdm = field(init=False)
    began: float | None = field(init=False, default=None)  # the model ready, on a CPU
    said: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.bar = tqdm(total=self.total, unit="img", desc="ingest", disable=not self.enabled,
                        smoothing=0.1)

    @classmethod
    def for_collection(cls, total: int, enabled: bool, source: str,
                       pretrained: str | None) -> IngestProgress:
        """The progress of an ingest into a collection of model ``source``/``pretrained``
        (a preset's model names its faster preset)."""
        chosen = preset_for(source, pretrained)
        return cls(total, enabled, chosen.faster_on_cpu if chosen else "")

    def model_ready(self, on_cpu: bool) -> None:
        """The model is loaded; on a CPU the first batch's time is measured from here."""
        if on_cpu:
            self.began = clock()

    def advance(self, embedded: int) -> None:
        """One file handled; ``embedded``: images through the model so far in this run."""
        self.bar.update(1)
        if self.began is None or self.said or embedded == 0 or not self.enabled:
            return
        self.said = True
        left = self.total - self.bar.n
        if left > 0:
            tqdm.write(self.estimate(embedded, clock() - self.began, left), file=sys.stderr)

    def estimate(self, embedded: int, seconds: float, left: int) -> str:
        """The line said after the first batch.

        >>> print(IngestProgress(10_032, False, "clip-b32").estimate(32, 64.0, 10_000))
        ... # doctest: +NORMALIZE_WHITESPACE
        First batch: 0.5 images/s on the CPU, about 5 h 33 min left for 10,000 images; the
        clip-b32 preset is faster on a CPU (in a new store: --model clip-b32 --store
        NEW_FOLDER).
        """
        rate = embedded / max(seconds, 1e-9)
        handled = max(self.bar.n, embedded)
        left_s = left * max(seconds, 1e-9) / handled
        line = (f"First batch: {rate:.3g} images/s on the CPU, {_duration(left_s)} left for "
                f"{left:,} images")
        if left_s > SLOW_INGEST_S and self.faster:
            line += (f"; the {self.faster} preset is faster on a CPU (in a new store: "
                     f"--model {self.faster} --store NEW_FOLDER)")
        return line + "."

    def close(self) -> None:
        self.bar.close()


def _duration(seconds: float) -> str:
    """A wait in words, to the minute.

    >>> _duration(42), _duration(754), _duration(19_980)
    ('under a minute', 'about 13 min', 'about 5 h 33 min')
    """
    if seconds < 60:
        return "under a minute"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"about {hours} h {minutes} min" if hours else f"about {minutes} min"

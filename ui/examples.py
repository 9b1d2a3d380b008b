"""Example queries that show what reranking is for, chosen by measurement on a collection.

The demo indexes generated scenes whose captions are known, so for every caption we know
which image is right. ``choose_examples`` runs each caption through the same search the
app runs and keeps the ones where the bi-encoder puts the right image below rank 1 and the
reranker puts it first (plus one both get right). They are saved next to the collection
and offered in the app as one-click examples.

Example:
    >>> examples = choose_examples(client, [("a red circle left of a blue square",
    ...                                      "/demo/images/test/000007.png")])
    >>> write_examples(Path("store"), examples)  # next to the collection
    PosixPath('store/examples.json')
    >>> read_examples("store") == examples
    True
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from twinrank.search import SearchClient
from twinrank.ui.views import path_name

EXAMPLES_FILE = "examples.json"
FIXED = 4  # examples the reranker fixes
AGREED = 1  # examples both stages get right


@dataclass(frozen=True)
class Example:
    """A query, the image it describes, and where each stage ranked that image.

    ``bi_rank`` is None when the bi-encoder did not retrieve the image among the
    reranker's candidates at all.
    """

    query: str
    image: str  # the path of the image the query describes
    bi_rank: int | None
    rerank_rank: int | None

    @property
    def fixed(self) -> bool:
        """The bi-encoder missed rank 1 and the reranker put the right image first."""
        return self.rerank_rank == 1 and (self.bi_rank is None or self.bi_rank > 1)

    def label(self) -> str:
        """How the example reads in the terminal: bi-encoder rank → reranked rank."""
        bi = f"#{self.bi_rank}" if self.bi_rank else "not found"
        return (f"{self.query!r} ({path_name(self.image)}): bi-encoder {bi} → reranked "
                f"#{self.rerank_rank}")


def measure(client: SearchClient, query: str, image_path: str) -> Example:
    """Where the bi-encoder and the reranker rank ``image_path`` for ``query``."""
    _, after = client.compare(query, k=client.rerank_top_k)
    wanted = str(image_path)
    for hit in after:
        if wanted in (str(p) for p in hit.payload.get("paths") or [hit.path]):
            return Example(query, wanted, hit.bi_rank, hit.rerank_rank)
    return Example(query, wanted, None, None)


@dataclass
class Tally:
    """What the reranker did to the captions tried: the honest context of the examples."""

    tried: int = 0
    fixed: int = 0  # bi-encoder below rank 1, reranked to rank 1
    broken: int = 0  # bi-encoder rank 1, reranked below it
    bi_first: int = 0
    reranked_first: int = 0

    def summary(self) -> str:
        return (f"Of {self.tried} captions tried, the bi-encoder put the right picture first "
                f"for {self.bi_first} and the reranker for {self.reranked_first}: it fixed "
                f"{self.fixed} and broke {self.broken}.")


def choose_examples(
    client: SearchClient, captions: Iterable[tuple[str, str]], fixed: int = FIXED,
    agreed: int = AGREED, visible: int = 8, tally: Tally | None = None,
) -> list[Example]:
    """Captions where the reranker fixes the bi-encoder (biggest visible jumps first), then
    ones both stages get right; one example per image.

    ``captions`` are (query, path of the one image it describes) pairs. A fix whose right
    image the bi-encoder ranked within ``visible`` is preferred, so both columns show it.
    Stops once it has twice the fixes it needs; ``tally`` counts every caption it tried.
    """
    fixes: list[Example] = []
    agreements: list[Example] = []
    seen: set[str] = set()
    for query, path in captions:
        if path in seen:
            continue
        example = measure(client, query, path)
        if tally is not None:
            tally.tried += 1
            tally.fixed += example.fixed
            tally.broken += example.bi_rank == 1 and example.rerank_rank != 1
            tally.bi_first += example.bi_rank == 1
            tally.reranked_first += example.rerank_rank == 1
        if example.fixed:
            fixes.append(example)
            seen.add(path)
        elif example.bi_rank == 1 and example.rerank_rank == 1 and len(agreements) < agreed:
            agreements.append(example)
            seen.add(path)
        shown = [e for e in fixes if e.bi_rank is not None and e.bi_rank <= visible]
        if len(shown) >= 2 * fixed and len(agreements) >= agreed:
            break  # enough to choose from: a big collection need not be searched whole
    fixes.sort(key=lambda e: (e.bi_rank is None or e.bi_rank > visible,
                              -(e.bi_rank or 0), len(e.query)))
    return fixes[:fixed] + agreements[:agreed]


def write_examples(store: Path, examples: list[Example]) -> Path:
    """Save ``examples`` with the collection, where the app finds them."""
    path = Path(store) / EXAMPLES_FILE
    path.write_text(json.dumps([asdict(e) for e in examples], indent=2) + "\n")
    return path


def read_examples(store: Path | str) -> list[Example]:
    """The collection's saved examples; none when it has no (readable) examples file."""
    try:
        rows = json.loads((Path(store) / EXAMPLES_FILE).read_text())
        return [Example(str(r["query"]), str(r["image"]), r.get("bi_rank"),
                        r.get("rerank_rank")) for r in rows]
    except (OSError, ValueError, TypeError, KeyError):
        return []

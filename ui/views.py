"""What the app shows, as plain functions the tests can call without a browser."""

from __future__ import annotations

from search.hits import Hit


def movement(hit: Hit, k: int) -> str:
    """How far reranking moved a hit: '↑3', '↓2', '=', or 'new' if it was outside the top k."""
    if hit.rerank_rank is None:
        return ""
    if hit.bi_rank > k:
        return "new"
    moved = hit.bi_rank - hit.rerank_rank
    if moved > 0:
        return f"↑{moved}"
    if moved < 0:
        return f"↓{-moved}"
    return "="


def caption(hit: Hit, stage: str, k: int) -> str:
    name = hit.path.rsplit("/", 1)[-1]
    if stage == "before":
        return f"#{hit.bi_rank} · cos {hit.bi_score:.3f} · {name}"
    score = hit.rerank_score if hit.rerank_score is not None else hit.score
    return f"#{hit.rerank_rank} · match {score:.3f} · {movement(hit, k)} · {name}"


def timing_line(timings: dict[str, float]) -> str:
    labels = {"encode_ms": "text encoding", "search_ms": "vector search", "rerank_ms": "rerank"}
    parts = [f"{labels[key]} {timings[key]:.1f} ms" for key in labels if key in timings]
    return " · ".join(parts)

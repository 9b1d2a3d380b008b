"""Which reranker a search uses when none is named, and how its score is blended.

Written once, without torch, so the client, the app, evaluation and the torch-free fast
path (``search.fast``) follow the same rule. Both take anything that says what its model
is: a loaded model, or an exported query side (``model_id``, ``reranker_trained``,
``bi_weight``).

Example:
    >>> class Exported:
    ...     model_id, reranker_trained, bi_weight = "blip:x", True, 1.0
    >>> default_reranker(Exported())
    ('fused', None)
"""

from __future__ import annotations

from typing import Any, Protocol

from twinrank.models.evidence import Evidence, rerank_doubt
from twinrank.rerank.base import untrained_allowed

FUSED = "fused"  # the model's own cross-encoder (``rerank.fused``)


class RerankerOwner(Protocol):
    """What the rule reads of a model: its identity, whether its cross-encoder was
    trained, and its recipe for blending the bi-encoder score into a reranked one."""

    @property
    def model_id(self) -> str: ...
    @property
    def reranker_trained(self) -> bool: ...
    @property
    def bi_weight(self) -> float: ...
    @property
    def reranker_evidence(self) -> Evidence | None: ...


def default_reranker(model: RerankerOwner | None) -> tuple[str, str | None]:
    """The reranker a collection gets when none is named, and a note when it gets none.

    The model's own cross-encoder only when it was trained *and* its recorded held-out
    evidence says it beats the bi-encoder (BLIP: its authors' published evaluation);
    otherwise no reranking, with one line saying why, with the figures, and what to do.
    The untrained-head switch (tests) turns it on regardless.
    """
    if model is not None and untrained_allowed():
        return FUSED, None
    if model is None or not model.reranker_trained:
        who = model.model_id if model is not None else "this collection's model"
        return "none", (f"No reranking: {who} has no trained reranker. Use --reranker "
                        f"blip-itm, a preset with a reranker (twinrank models), or twinrank "
                        f"train.")
    doubt = rerank_doubt(model.model_id, model.reranker_evidence)
    return ("none", doubt) if doubt else (FUSED, None)


def forced_note(model: RerankerOwner | None) -> str | None:
    """The line a search prints when ``--reranker fused`` is asked for although the model's
    evidence does not back it: the same figures as the default's refusal."""
    if model is None or not model.reranker_trained or untrained_allowed():
        return None
    doubt = rerank_doubt(model.model_id, model.reranker_evidence)
    return None if doubt is None else doubt.replace("No reranking by default: ",
                                                    "Reranking as asked, although ", 1)


def blend_weight(reranker: Any | None, model: RerankerOwner | None) -> float:
    """The bi-encoder score's weight in a reranked score when the user names none.

    A model's own cross-encoder comes with its model's recipe (``model.bi_weight``: BLIP
    ranks by ITM logit + ITC cosine, so 1); any other reranker's scores stand alone (0).

    >>> blend_weight(None, None)
    0.0
    """
    if reranker is not None and model is not None and reranker.name == FUSED:
        return float(model.bi_weight)
    return 0.0

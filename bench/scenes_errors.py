"""What a model gets wrong on synthetic scenes: its top-1 mistakes, sorted by kind.

For a sample of captions (the first caption of each sampled image), it takes the bi-encoder's
and the cross-encoder's (over all images) top-1 image and, when it is the wrong one, says
how that scene differs from the right one: colours swapped between the named objects,
their places swapped, a shape that differs, the relation, an extra object moved in, ...
Binding mistakes (swaps) are what a cross-encoder exists to fix; a shape or colour the
image tower cannot see is not, since both stages read the same tower's output.

    python -m bench.scenes_errors --model models/demo --scenes /tmp/scenes-main --split test \
        --out bench/results/scenes_errors_demo.json
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.train_quality import cross_scores, encode
from twinrank.captions.data import scene_lookalike_key
from twinrank.models import create_model

ATTRIBUTES = ("shape", "colour", "size")


def difference(wanted: dict[str, Any], found: dict[str, Any]) -> str:
    """How the ``found`` scene differs from the ``wanted`` one, e.g. "colour swapped".

    >>> a = {"shape": "circle", "colour": "red", "size": "small"}
    >>> b = {"shape": "square", "colour": "blue", "size": "small"}
    >>> red_b = dict(b, colour="red"); blue_a = dict(a, colour="blue")
    >>> difference({"relation": "above", "objects": [a, b]},
    ...            {"relation": "above", "objects": [blue_a, red_b]})
    'colour swapped'
    >>> difference({"relation": "above", "objects": [a, b]},
    ...            {"relation": "left of", "objects": [b, a]})
    'relation+places swapped'
    """
    parts = [] if wanted["relation"] == found["relation"] else ["relation"]
    mine, theirs = wanted["objects"], found["objects"]
    if mine == theirs[::-1]:
        return "+".join(parts + ["places swapped"])
    wanted_all = mine + wanted.get("extras", [])
    if sorted(map(str, theirs)) != sorted(map(str, mine)) and all(
            obj in wanted_all for obj in theirs):
        parts.append("an unnamed object named")  # an extra took a named one's place
        return "+".join(parts)
    for attribute in ATTRIBUTES:
        values, other = [o[attribute] for o in mine], [o[attribute] for o in theirs]
        if values != other:
            swapped = values == other[::-1]
            parts.append(f"{attribute} {'swapped' if swapped else 'differs'}")
    return "+".join(parts) or "same caption, other picture"


@torch.inference_mode()
def errors(model_path: str, scenes: Path, split: str, queries: int,
           threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    model = create_model(model_path).eval()
    spec = f"scenes:{scenes}:{split}:en"
    rows = [json.loads(line) for line in (scenes / f"{split}.en.jsonl").open(encoding="utf-8")]
    texts, owners, image_vectors, image_tokens = encode(model, spec, queries)
    text_vectors = model.encode_text(model.tokenize(texts)).text_vector
    scores = {"bi": (text_vectors @ image_vectors.T).numpy(),
              "cross_all": np.stack([cross_scores(model, t, image_tokens) for t in texts])}
    result: dict[str, Any] = {"model": model_path, "data": spec, "queries": len(texts)}
    for stage, matrix in scores.items():
        top = matrix.argmax(axis=1)
        wrong = [(rows[int(o)]["scene"], rows[int(t)]["scene"])
                 for o, t in zip(owners, top, strict=True) if t != o]
        kinds = collections.Counter(difference(wanted, found) for wanted, found in wrong)
        result[stage] = {"r1": round(100 * float(np.mean(top == owners)), 1),
                         "mistakes_total": len(wrong),
                         # the same bag of shapes, colours and sizes, bound otherwise
                         "look_alike_mistakes": sum(scene_lookalike_key(w) == scene_lookalike_key(f)
                                                    for w, f in wrong),
                         "mistakes": dict(kinds.most_common())}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--scenes", type=Path, required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    result = errors(args.model, args.scenes, args.split, args.queries, args.threads)
    result["command"] = " ".join(["python -m bench.scenes_errors", *(argv or sys.argv[1:])])
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

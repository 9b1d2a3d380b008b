"""Quick text->image R@1 of a trained model: bi-encoder, retrieve-and-rerank@k, CE over all.

A trainer's check, not the evaluation harness (``twinrank evaluate`` is): it scores a
sample of queries (one caption per image) so it finishes in a minute on a busy CPU.

    python -m bench.train_quality --model /tmp/runs/j2 --data scenes:/tmp/scenes4:test:en \
        --queries 150 --k 20
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from twinrank.captions.data import load_dataset
from twinrank.evaluation.metrics import coop_ranking, t2i_recall, topk_indices
from twinrank.models import TwinModel, create_model
from twinrank.train.batches import decode_all


@torch.inference_mode()
def encode(model: TwinModel, spec: str, queries: int, seed: int = 0):
    records = load_dataset(spec)
    pixels = decode_all([r.image_path for r in records], model.preprocess)
    images = [model.encode_image(pixels[i:i + 256].float()) for i in range(0, len(pixels), 256)]
    image_vectors = torch.cat([e.image_vector for e in images])
    image_tokens = torch.cat([e.image_tokens for e in images])
    rng = np.random.default_rng(seed)
    owners = rng.choice(len(records), size=min(queries, len(records)), replace=False)
    texts = [records[int(i)].captions[0] for i in owners]
    return texts, np.asarray(owners), image_vectors, image_tokens


@torch.inference_mode()
def cross_scores(model: TwinModel, text: str, image_tokens: torch.Tensor) -> np.ndarray:
    encoded = model.encode_text(model.tokenize([text]))
    n = image_tokens.shape[0]
    logits = model.match_logit(encoded.text_tokens.expand(n, -1, -1),
                               encoded.text_mask.expand(n, -1), image_tokens)
    return logits.float().numpy()


def quality(model: TwinModel, spec: str, queries: int, k: int, ce_all: bool) -> dict[str, float]:
    texts, owners, image_vectors, image_tokens = encode(model, spec, queries)
    with torch.inference_mode():
        text_vectors = model.encode_text(model.tokenize(texts)).text_vector
    bi = (text_vectors @ image_vectors.T).numpy()  # (Q, N)
    top = topk_indices(bi, k)
    rerank = np.stack([cross_scores(model, t, image_tokens[top[q]]) for q, t in enumerate(texts)])
    result = {"bi_r1": t2i_recall(bi, owners, (1,))["t2i_recall@1"],
              f"bi_r{k}": t2i_recall(bi, owners, (k,))[f"t2i_recall@{k}"],
              f"coop{k}_r1": t2i_recall(coop_ranking(bi, rerank, k), owners, (1,))["t2i_recall@1"]}
    if ce_all:
        full = np.stack([cross_scores(model, t, image_tokens) for t in texts])
        result["ce_all_r1"] = t2i_recall(full, owners, (1,))["t2i_recall@1"]
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", action="append", required=True)
    parser.add_argument("--queries", type=int, default=150)
    parser.add_argument("-k", "--k", type=int, default=20)
    parser.add_argument("--no-ce-all", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = create_model(args.model, device="cpu")
    rows = {}
    for spec in args.data:
        started = time.perf_counter()
        rows[spec] = quality(model, spec, args.queries, args.k, not args.no_ce_all)
        rows[spec]["seconds"] = round(time.perf_counter() - started, 1)
        print(spec, json.dumps(rows[spec]), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        record = {"command": "python -m bench.train_quality " + " ".join(sys.argv[1:]),
                  "model": args.model, "results": rows, "note": "measured on a shared CPU"}
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()

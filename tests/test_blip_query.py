"""BLIP's query side in numpy (``models.blip_query``) against the torch model it exports.

On a tiny random BLIP saved like a hub checkpoint and on one random BLIP of blip-base
geometry (577 x 768 tokens per image, 12 text layers): the ids equal
``BlipTwinModel.tokenize``'s, the ITC vectors ``encode_text``'s, and the ITM logits
``rerank_logit``'s ([ENC] first) over float32 and float16-rounded tokens, for short,
long (truncated; the other cross-attention route), punctuated and non-ASCII queries.
A subprocess checks that the numpy side loads neither torch nor transformers.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from twinrank.models import create_model
from twinrank.models.blip import BlipTwinModel
from twinrank.models.blip_export import export_blip_query
from twinrank.models.blip_query import MANIFEST, WEIGHTS, BlipQuery, BlipQueryError
from twinrank.models.blip_random import random_blip, save_random_blip

# float32 in another order of operations: vectors 1e-5 (tiny) / 1e-4 (base), logits 1e-4.
VECTOR_TOL = {"tiny": 1e-5, "base": 1e-4}
LOGIT_TOL = 1e-4
QUERIES = [
    "a red circle left of a blue square",
    "Dog!",
    "Hello, Wörld — café ☃ 日本語 naïve résumé?!",
    "",
    "the small green triangle, above (or below?) the big photo; " * 6,  # truncated at tiny
]
BASE_LONG = "a man and a woman with a dog on the beach left of a red square " * 6  # 80+ ids


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[BlipTwinModel, BlipQuery]:
    root = tmp_path_factory.mktemp("blip-query-tiny")
    folder = save_random_blip(root / "model", "tiny", init_std=0.3)
    model = create_model(f"blip:{folder}", device="cpu")
    assert isinstance(model, BlipTwinModel)
    return model, BlipQuery.load(export_blip_query(model, root / "query"))


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> tuple[BlipTwinModel, BlipQuery]:
    """blip-base geometry, built in memory (saving and reloading 0.9 GB adds nothing here).
    A spread of 0.04 makes the pictures move the logits by ~1 (BERT's 0.02: ~0.03) and
    keeps float32 accurate: with tokens 2.5x larger the attention saturates and torch's own
    float32 logits land up to 6e-4 from float64, so no float32 code could meet 1e-4."""
    retrieval, processor = random_blip("base", seed=1, init_std=0.04)
    model = BlipTwinModel(retrieval, processor, "blip:random-base", "blip:random-base@1").eval()
    folder = tmp_path_factory.mktemp("blip-query-base") / "query"
    return model, BlipQuery.load(export_blip_query(model, folder))


def random_tokens(model: BlipTwinModel, count: int, seed: int) -> np.ndarray:
    tokens, width = model.token_shape
    return np.random.default_rng(seed).standard_normal((count, tokens, width)).astype(np.float32)


def torch_logits(model: BlipTwinModel, ids: np.ndarray, mask: np.ndarray,
                 tokens: np.ndarray) -> np.ndarray:
    """``rerank_logit`` as the fused reranker calls it: the query repeated k times."""
    count = tokens.shape[0]
    with torch.no_grad():
        logits = model.rerank_logit(torch.from_numpy(ids).expand(count, -1),
                                    torch.from_numpy(mask).expand(count, -1),
                                    torch.from_numpy(tokens.astype(np.float32)))
    return logits.numpy()


def test_ids_equal_tokenize(tiny):
    model, query = tiny
    ids, mask = query.tokenize(QUERIES)
    expected = model.tokenize(QUERIES).numpy()
    assert ids.dtype == np.int64 and np.array_equal(ids, expected)
    assert np.array_equal(mask, expected != model.pad_id)
    assert ids.shape[1] == model.max_text_length  # the long query was truncated
    for text in QUERIES:  # one query alone: no padding at all
        alone, _ = query.tokenize([text])
        assert np.array_equal(alone, model.tokenize([text]).numpy())


@pytest.mark.parametrize("size", ["tiny", "base"])
def test_text_vectors_equal_encode_text(size, request):
    model, query = request.getfixturevalue(size)
    texts = QUERIES if size == "tiny" else QUERIES[:3] + [BASE_LONG]
    vectors, ids, mask = query.encode(texts)
    with torch.no_grad():
        expected = model.encode_text(model.tokenize(texts))
    assert vectors.dtype == np.float32 and vectors.shape == expected.text_vector.shape
    assert np.abs(vectors - expected.text_vector.numpy()).max() < VECTOR_TOL[size]
    assert np.array_equal(ids, expected.text_tokens.numpy())
    assert np.array_equal(mask, expected.text_mask.numpy())
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("size", ["tiny", "base"])
def test_match_logits_equal_rerank_logit(size, request):
    model, query = request.getfixturevalue(size)
    count = 6 if size == "tiny" else 2
    texts = QUERIES if size == "tiny" else [QUERIES[2], BASE_LONG]
    tokens = random_tokens(model, count, seed=7)
    half = tokens.astype(np.float16)  # what the store keeps
    lengths = set()
    for text in texts:
        _, ids, mask = query.encode([text])
        lengths.add(ids.shape[1])
        for image in (tokens, half):
            logits = query.match_logits(ids, mask, image)
            expected = torch_logits(model, ids, mask, image)
            assert logits.dtype == np.float32 and logits.shape == (count,)
            assert np.abs(logits - expected).max() < LOGIT_TOL, text
            assert np.ptp(expected) > 100 * LOGIT_TOL  # the pictures matter to the score
    heads = query.manifest.hidden_size // query.manifest.heads
    assert max(lengths) > heads + 5  # the long query took the projected route


def test_padded_row_scores_as_its_unpadded_query(tiny):
    model, query = tiny
    _, ids, mask = query.encode(["dog", "a big red circle on the beach"])
    assert not mask[0].all()
    tokens = random_tokens(model, 4, seed=3)
    padded = query.match_logits(ids[:1], mask[:1], tokens)
    _, alone_ids, alone_mask = query.encode(["dog"])
    assert np.abs(padded - query.match_logits(alone_ids, alone_mask, tokens)).max() < 1e-6
    assert np.abs(padded - torch_logits(model, ids[:1], mask[:1], tokens)).max() < LOGIT_TOL


def test_no_candidates_and_wrong_shapes(tiny):
    model, query = tiny
    _, ids, mask = query.encode(["dog"])
    tokens, width = model.token_shape
    assert query.match_logits(ids, mask, np.zeros((0, tokens, width), np.float32)).shape == (0,)
    with pytest.raises(ValueError):
        query.match_logits(ids, mask, np.zeros((2, tokens, width + 1), np.float32))
    with pytest.raises(ValueError):
        query.encode([])


def test_export_holds_the_query_side_only(tiny, tmp_path):
    model, _ = tiny
    folder = export_blip_query(model, tmp_path / "query")
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["enc_token_id"] == model.enc_token_id == 30523
    assert manifest["model_id"] == model.model_id and manifest["bi_weight"] == model.bi_weight
    assert manifest["token_shape"] == list(model.token_shape)
    names = BlipQuery.load(folder)._w.keys()
    assert names and all(n.startswith(("text_encoder.", "text_proj.", "itm_head.")) for n in names)
    assert all(BlipQuery.load(folder)._w[n].dtype == np.float32 for n in names)
    export_blip_query(model, folder)  # a second export replaces the first, nothing left over
    assert sorted(p.name for p in tmp_path.iterdir()) == ["query"]
    (folder / MANIFEST).unlink()  # as after a crash before the manifest: not an export
    with pytest.raises(BlipQueryError):
        BlipQuery.load(folder)
    assert (folder / WEIGHTS).is_file()


def test_runs_without_torch(tiny, tmp_path):
    model, query = tiny
    tokens = random_tokens(model, 3, seed=5)
    np.save(tmp_path / "tokens.npy", tokens.astype(np.float16))
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        import numpy as np
        from twinrank.models.blip_query import BlipQuery
        query = BlipQuery.load(Path({str(query.folder)!r}))
        vectors, ids, mask = query.encode(["a red circle"])
        logits = query.match_logits(ids, mask, np.load({str(tmp_path / "tokens.npy")!r}))
        print(logits.tolist())
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers")))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=True)
    logits_line, modules_line = done.stdout.strip().splitlines()
    assert modules_line == "[]"
    _, ids, mask = query.encode(["a red circle"])
    expected = torch_logits(model, ids, mask, tokens.astype(np.float16))
    assert np.abs(np.array(json.loads(logits_line)) - expected).max() < LOGIT_TOL

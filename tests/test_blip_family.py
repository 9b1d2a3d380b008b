"""BLIP as a twinrank model family, on a tiny random BLIP saved like a hub checkpoint.

Equivalence with transformers' own ``BlipForImageTextRetrieval`` (no weights can be
downloaded here; the architecture and the code paths are the real ones): pixels equal
``BlipProcessor``'s, the bi-encoder cosine equals the model's ITC output
(``use_itm_head=False``), the rerank score over tokens cached at ingest equals its ITM
output as BLIP's authors compute it (``[ENC]`` in place of ``[CLS]``; logit[1], plus the
ITC cosine) and the read-the-image ``BlipItmReranker``.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_image
from PIL import Image
from typer.testing import CliRunner

from twinrank.cli import app
from twinrank.models import ModelLoadError, create_model
from twinrank.models.blip import BlipTwinModel
from twinrank.models.blip_random import save_random_blip
from twinrank.models.encode import ImageEmbedder

# Tolerances. Model-level equalities are the same float32 arithmetic in another order:
# 1e-5. Scores over cached tokens went through the store's float16 (relative rounding
# 2^-11 of every token feature): measured up to 5e-4 on this tiny model's logits (its
# weights drawn wide, std 0.3, so pictures matter), hence 1e-3. Camera-size JPEGs are
# tests/test_pixels.py's.
EXACT = 1e-5
CACHED = 1e-3
QUERIES = ["a red circle left of a blue square", "dog", "a big green triangle on the beach"]


@pytest.fixture(scope="session")
def blip_folder(tmp_path_factory):
    return save_random_blip(tmp_path_factory.mktemp("blip") / "tiny", "tiny", init_std=0.3)


@pytest.fixture(scope="session")
def blip(blip_folder) -> BlipTwinModel:
    model = create_model(f"blip:{blip_folder}", device="cpu")
    assert isinstance(model, BlipTwinModel)
    return model


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("blip-photos")
    return [make_image(root / f"p{i}.png", seed=100 + i, size=(64 + 8 * i, 48)) for i in range(6)]


def open_rgb(path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


ENC_ID = 30523  # BLIP's [ENC]: bert-base-uncased's 30522 words, then [DEC], then [ENC]


def reference_scores(model: BlipTwinModel, text: str, image: Image.Image) -> tuple[float, float]:
    """(ITC cosine, ITM logit[1]) as transformers computes them from scratch, fed the ids
    BLIP's own code feeds its ITM encoder: ``[ENC]`` where ``BlipProcessor`` puts ``[CLS]``."""
    inputs = model.processor(images=[image], text=[text], return_tensors="pt")
    enc_ids = inputs["input_ids"].clone()
    enc_ids[:, 0] = ENC_ID
    with torch.no_grad():
        itc = model.retrieval(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"],
                              attention_mask=inputs["attention_mask"], use_itm_head=False)
        itm = model.retrieval(input_ids=enc_ids, pixel_values=inputs["pixel_values"],
                              attention_mask=inputs["attention_mask"])
    return float(itc.itm_score[0, 0]), float(itm.itm_score[0, 1])


def test_surface_of_the_family(blip):
    assert blip.family == "blip" and blip.reranker_trained
    assert blip.image_size == 32 and blip.vector_size == 16
    assert blip.token_shape == (17, 32)  # class token + (32 / 8)^2 patches, vision width
    assert blip.model_id.startswith("blip:tiny@") and blip.source.startswith("blip:")


def test_pixels_and_ids_equal_blip_processor(blip, photos):
    images = [open_rgb(p) for p in photos[:3]]
    images.append(images[0].convert("RGBA").resize((33, 70)))  # alpha, odd size
    images.append(images[1].convert("L"))  # grayscale
    expected = blip.processor(images=images, return_tensors="pt")["pixel_values"]
    assert torch.allclose(blip.preprocess_images(images), expected, atol=EXACT)
    embedder = ImageEmbedder(blip, precision="fp32")  # ingest's split: PIL steps + normalise
    assert embedder.preparer.split
    assert torch.allclose(embedder.pixels(images), expected, atol=EXACT)
    ids = blip.processor(text=QUERIES, padding=True, return_tensors="pt")["input_ids"]
    assert torch.equal(blip.tokenize(QUERIES), ids)


def test_one_vision_forward_gives_itc_vector_and_itm_tokens(blip, photos):
    image = open_rgb(photos[0])
    calls: list[int] = []
    hook = blip.retrieval.vision_model.register_forward_hook(lambda *a: calls.append(1))
    try:
        with torch.no_grad():
            encoded = blip.encode_image(blip.preprocess_images([image]))
    finally:
        hook.remove()
    assert len(calls) == 1
    assert encoded.image_tokens.shape == (1, *blip.token_shape)
    for query in QUERIES:
        with torch.no_grad():
            text = blip.encode_text(blip.tokenize([query]))
            cosine = float(encoded.image_vector @ text.text_vector.T)
            match = float(blip.rerank_logit(text.text_tokens, text.text_mask,
                                            encoded.image_tokens))
        assert (cosine, match) == pytest.approx(reference_scores(blip, query, image), abs=EXACT)


def test_enc_token_is_found_as_blip_defines_it(blip, tmp_path):
    """Hugging Face's BLIP tokenizers are bert-base-uncased (+ [DEC] as bos at most); BLIP's
    code adds [DEC] then [ENC], so [ENC] is 30523 either way. transformers' own forward keeps
    [CLS] first, and that changes the score: the recipe is not a no-op."""
    from transformers import BertTokenizer

    from twinrank.models.blip import enc_token_id
    from twinrank.models.blip_random import BLIP_VOCAB_SIZE

    words = [f"[unused{i}]" for i in range(30522)]
    words[0], words[100], words[101], words[102] = "[PAD]", "[UNK]", "[CLS]", "[SEP]"
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    plain = BertTokenizer(str(tmp_path / "vocab.txt"))
    assert enc_token_id(plain, BLIP_VOCAB_SIZE) == ENC_ID
    with_dec = BertTokenizer(str(tmp_path / "vocab.txt"), bos_token="[DEC]")
    with_dec.add_special_tokens({"bos_token": "[DEC]"})
    assert with_dec.convert_tokens_to_ids("[DEC]") == 30522
    assert enc_token_id(with_dec, BLIP_VOCAB_SIZE) == ENC_ID
    assert blip.enc_token_id == ENC_ID  # the random folder's vocabulary holds [ENC] itself
    with pytest.raises(ModelLoadError, match="no room for BLIP's \\[ENC\\]"):
        enc_token_id(plain, 30522)
    image = open_rgb(blip_photo := make_image(tmp_path / "p.png", seed=3))
    inputs = blip.processor(images=[image], text=[QUERIES[0]], return_tensors="pt")
    with torch.no_grad():
        with_cls = float(blip.retrieval(**inputs).itm_score[0, 1])
    assert abs(with_cls - reference_scores(blip, QUERIES[0], open_rgb(blip_photo))[1]) > 1e-3


def test_offline_hub_id_not_cached_is_one_sentence_at_once(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-home" / "hub"))
    started = time.perf_counter()
    with pytest.raises(ModelLoadError) as caught:
        create_model("blip:Salesforce/blip-itm-base-coco", device="cpu")
    assert time.perf_counter() - started < 5  # no retry loop against the hub
    message = str(caught.value)
    assert "Salesforce/blip-itm-base-coco" in message and "twinrank models pull" in message
    assert "--model demo" in message and "\n" not in message


def test_save_and_reload_keeps_identity_and_scores(blip, photos, tmp_path):
    folder = blip.save(tmp_path / "saved", reranker_trained=True)
    again = create_model(folder, device="cpu")  # a saved folder loads without the prefix
    assert isinstance(again, BlipTwinModel) and again.model_id == create_model(
        f"blip:{folder}", device="cpu").model_id
    pixels = blip.preprocess_images([open_rgb(photos[1])])
    ids = blip.tokenize(QUERIES)
    with torch.no_grad():
        for model_a, model_b in [(blip, again)]:
            a, b = model_a.encode_image(pixels), model_b.encode_image(pixels)
            assert torch.allclose(a.image_vector, b.image_vector, atol=EXACT)
            ta, tb = model_a.encode_text(ids), model_b.encode_text(ids)
            assert torch.allclose(ta.text_vector, tb.text_vector, atol=EXACT)


def test_ingest_search_rerank_end_to_end(blip_folder, blip, photos, tmp_path):
    """CLI ingest with --model blip:FOLDER, then the client: the bi-encoder score is the
    ITC cosine, the rerank score (from tokens cached at ingest: the files are gone by
    then) is the ITM output, and equals today's read-the-image BlipItmReranker."""
    from twinrank.rerank.itm import BlipItmReranker
    from twinrank.search import SearchClient

    folder = tmp_path / "photos"
    folder.mkdir()
    copies = [Path(shutil.copy(p, folder / p.name)) for p in photos]
    query = QUERIES[0]
    expected = {p.name: reference_scores(blip, query, open_rgb(p)) for p in copies}
    itm = BlipItmReranker(blip.retrieval, blip.processor, device="cpu", precision="fp32")
    read_images = dict(zip([p.name for p in copies], itm.score_images(
        query, [open_rgb(p) for p in copies]), strict=True))
    store = tmp_path / "store"
    result = CliRunner().invoke(app, ["ingest", str(folder), "--store", str(store),
                                      "--model", f"blip:{blip_folder}", "--device", "cpu",
                                      "--precision", "fp32", "--no-progress"])
    assert result.exit_code == 0, result.output
    shutil.rmtree(folder)  # a rerank that re-read an image would fail now
    with SearchClient(store, device="cpu") as client:  # BLIP's ITM is trained: on by default
        assert isinstance(client.model, BlipTwinModel)
        assert client.store.info.bytes_per_image() == 17 * 32 * 2
        hits = client.search(query, k=len(photos))
    assert len(hits) == len(photos)
    for hit in hits:
        cosine, match = expected[Path(hit.path).name]
        assert hit.bi_score == pytest.approx(cosine, abs=1e-4)  # the stored vector is float32
        assert hit.rerank_score == pytest.approx(match, abs=CACHED)
        assert hit.score == pytest.approx(match + cosine, abs=CACHED)  # BLIP's ITM + ITC
        assert hit.rerank_score == pytest.approx(float(read_images[Path(hit.path).name]),
                                                 abs=CACHED)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert len({round(h.rerank_score, 3) for h in hits}) > 1  # pictures matter to the head


def test_joint_training_two_steps_then_reload_gives_the_same_scores(blip_folder, blip, photos,
                                                                   tmp_path):
    """``train --mode joint`` on BLIP (ITC + ITM, negatives mined from its own ITC) writes
    a folder that transformers itself loads and that twinrank reloads to the same scores."""
    from transformers import BlipForImageTextRetrieval

    data = tmp_path / "captions.jsonl"
    data.write_text("".join(json.dumps({"image": str(p), "caption": c}) + "\n"
                            for p, c in zip(photos, QUERIES * 2, strict=True)))
    result = CliRunner().invoke(app, [
        "train", "--data", str(data), "--out", str(tmp_path / "run"), "--model",
        f"blip:{blip_folder}", "--mode", "joint", "--steps", "2", "--batch-size", "4",
        "--warmup-steps", "1", "--lr", "1e-3", "--device", "cpu",
        "--freeze-layers", "1"])
    assert result.exit_code == 0, result.output
    losses = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert {"contrastive_loss", "match_loss"} <= set(losses[-1])
    trained = create_model(tmp_path / "run", device="cpu")
    assert isinstance(trained, BlipTwinModel) and trained.reranker_trained
    assert trained.model_id != blip.model_id
    again = create_model(trained.save(tmp_path / "again"), device="cpu")
    assert again.logit_scale.item() == pytest.approx(trained.logit_scale.item())
    plain = BlipForImageTextRetrieval.from_pretrained(tmp_path / "run").eval()
    pixels = blip.preprocess_images([open_rgb(p) for p in photos[:2]])
    ids = blip.tokenize(QUERIES[:2])
    scores = {}
    with torch.no_grad():
        for name, model in {"start": blip, "trained": trained, "again": again}.items():
            image, text = model.encode_image(pixels), model.encode_text(ids)
            scores[name] = torch.cat([(image.image_vector * text.text_vector).sum(-1),
                                      model.match_logit(ids, text.text_mask,
                                                        image.image_tokens)])
        enc_ids = ids.clone()
        enc_ids[:, 0] = ENC_ID
        itm = plain(input_ids=enc_ids, pixel_values=pixels, attention_mask=(ids != 0).long())
    assert torch.allclose(scores["again"], scores["trained"], atol=EXACT)
    for start, now in zip(blip.early_parameters(1), trained.early_parameters(1), strict=True):
        assert torch.equal(start, now)  # --freeze-layers 1 kept embeddings + first layers
    assert not torch.allclose(scores["start"], scores["trained"], atol=1e-3)  # it learned
    assert torch.allclose(itm.itm_score[:, 1] - itm.itm_score[:, 0], scores["trained"][2:],
                          atol=EXACT)


def test_no_cache_tokens_stores_none_and_rerank_reads_the_images(blip_folder, blip, photos,
                                                                  tmp_path):
    from twinrank.search import SearchClient

    store = tmp_path / "store"
    result = CliRunner().invoke(app, ["ingest", str(photos[0].parent), "--store", str(store),
                                      "--model", f"blip:{blip_folder}", "--device", "cpu",
                                      "--precision", "fp32", "--no-progress",
                                      "--no-cache-tokens"])
    assert result.exit_code == 0, result.output
    query = QUERIES[2]
    with SearchClient(store, reranker="fused", device="cpu") as client:
        assert client.store.info.bytes_per_image() == 0
        hits = client.search(query, k=3)
        assert client.store.get_tokens([h.id for h in hits]) == {}
    for hit in hits:
        match = reference_scores(blip, query, open_rgb(hit.path))[1]
        assert hit.rerank_score == pytest.approx(match, abs=CACHED)


def test_evaluate_scores_blip_as_transformers_does(blip_folder, blip, photos, tmp_path):
    """``twinrank evaluate --model blip:...``: the bi-encoder's recall comes from BLIP's ITC
    cosines and COOP over every image from its ITM scores, as transformers computes them."""
    captions = ["a red dog", "a blue cat on the beach", "two green squares", "a big man",
                "a small photo of a woman", "circle left of a triangle"]
    data = tmp_path / "captions.jsonl"
    data.write_text("".join(json.dumps({"image": str(p), "caption": c}) + "\n"
                            for p, c in zip(photos, captions, strict=True)))
    result = CliRunner().invoke(app, [
        "evaluate", "--model", f"blip:{blip_folder}", "--data", str(data), "--modes",
        "bi,coop", "--k-sweep", str(len(photos)), "--latency-queries", "0", "--device", "cpu",
        "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    (table,) = [d["tables"]["all"] for d in report["datasets"].values()]
    pairs = np.array([[reference_scores(blip, c, open_rgb(p)) for p in photos]
                      for c in captions])  # (caption, image, [itc, itm])
    own = np.arange(len(captions))
    for mode, scores in (("bi", pairs[..., 0]), (f"coop@{len(photos)}", pairs[..., 1])):
        expected = 100.0 * float(np.mean(scores.argmax(axis=1) == own))
        assert table[mode]["t2i_recall@1"] == pytest.approx(expected)


def test_bf16_ingest_copy_of_blip_matches_fp32(blip, photos):
    """Ingest's bf16 copy (CPUs with native bf16) casts BLIP's vision modules only and
    leaves the model it was given in fp32."""
    images = [open_rgb(p) for p in photos[:3]]
    exact_vectors, exact_tokens = ImageEmbedder(blip, precision="fp32").embed(images)
    half = ImageEmbedder(blip, precision="bf16")
    vectors, tokens = half.embed(images)
    assert next(blip.retrieval.vision_model.parameters()).dtype == torch.float32
    assert half._tower.retrieval.text_encoder is blip.retrieval.text_encoder  # shared, not copied
    assert (vectors * exact_vectors).sum(axis=1).min() > 0.99
    assert tokens.shape == exact_tokens.shape == (3, *blip.token_shape)

"""The BLIP image-text-matching reranker on a tiny random config, offline."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from conftest import make_image
from typer.testing import CliRunner

from twinrank.cli import app
from twinrank.models import ModelLoadError
from twinrank.rerank import BlipItmReranker, make_reranker, open_rgb
from twinrank.rerank.registry import clear_reranker_cache
from twinrank.search.hits import Hit
from twinrank.search.ranking import rerank_hits

# BLIP's vocabulary ends with [DEC] and [ENC] (its code adds them to bert-base-uncased)
WORDS = "a red blue green circle square left right of the two [DEC] [ENC]".split()


def save_tiny_blip(folder):
    """A randomly initialised BLIP ITM model + processor, written like a hub checkpoint."""
    from transformers import (
        BertTokenizerFast,
        BlipConfig,
        BlipForImageTextRetrieval,
        BlipImageProcessor,
        BlipProcessor,
    )

    folder.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    # transformers 5 takes the vocabulary itself (a vocab_file leaves only the specials)
    tokenizer = BertTokenizerFast(vocab={word: i for i, word in enumerate(words)})
    processor = BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer)
    ids = dict(bos_token_id=2, pad_token_id=0, sep_token_id=3, eos_token_id=3)
    config = BlipConfig(
        text_config=dict(vocab_size=len(WORDS) + 5, hidden_size=32, encoder_hidden_size=32,
                         intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         max_position_embeddings=64, **ids),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, image_size=32, patch_size=8),
        projection_dim=32, image_text_hidden_size=32,
    )
    torch.manual_seed(0)
    model = BlipForImageTextRetrieval(config).eval()
    with torch.no_grad():  # random init barely sees the pixels; make images matter
        for parameter in model.parameters():
            if parameter.ndim > 1:
                parameter.normal_(0.0, 0.3)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def blip_folder(tmp_path_factory):
    return save_tiny_blip(tmp_path_factory.mktemp("tiny-blip"))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("itm_images")
    return [make_image(root / f"i{i}.png", seed=400 + i) for i in range(5)]


@pytest.fixture
def reranker(blip_folder):
    clear_reranker_cache()
    yield make_reranker(f"blip-itm:{blip_folder}", device="cpu")
    clear_reranker_cache()


def full_forward_scores(reranker, texts, pil_images):
    """What BlipForImageTextRetrieval's own forward gives, pair by pair, fed the ids BLIP's
    authors feed it ([ENC] first): the match logit, logit[1]."""
    scores = []
    enc = reranker.processor.tokenizer.convert_tokens_to_ids("[ENC]")
    for text, image in zip(texts, pil_images, strict=True):
        inputs = reranker.processor(images=image, text=text, return_tensors="pt")
        inputs["input_ids"][:, 0] = enc
        with torch.no_grad():
            logits = reranker.model(**inputs, use_itm_head=True).itm_score[0]
        scores.append(float(logits[1]))
    return np.array(scores)


def test_loads_from_a_folder_and_matches_the_models_own_forward(reranker, images):
    assert isinstance(reranker, BlipItmReranker) and reranker.device.type == "cpu"
    pil = [open_rgb(p) for p in images]
    query = "a red circle left of the blue square"
    expected = full_forward_scores(reranker, [query] * len(pil), pil)
    assert np.ptp(expected) > 1e-3  # the scores actually differ between images
    reranker.batch_size = 2  # batches of 2, 2, 1
    assert np.allclose(reranker.score_images(query, pil), expected, atol=1e-4)


def test_image_to_text_encodes_the_image_once_with_the_same_scores(reranker, images):
    image = open_rgb(images[0])
    captions = ["a red circle", "two green squares", "the blue circle left of a red square"]
    expected = full_forward_scores(reranker, captions, [image] * 3)
    calls = []
    hook = reranker.model.vision_model.register_forward_hook(lambda *a: calls.append(1))
    try:
        scores = reranker.score_captions(image, captions)
    finally:
        hook.remove()
    assert len(calls) == 1
    assert np.allclose(scores, expected, atol=1e-4)


def test_reranking_hits_reads_their_files_and_sorts_by_score(reranker, images):
    hits = [Hit(id=str(i), path=str(p), score=0.0, bi_score=1.0 - i / 10, bi_rank=i + 1)
            for i, p in enumerate(images)]
    query = "a green square"
    scores = reranker.score(query, hits)
    reranked = rerank_hits(reranker, query, hits)
    assert [h.id for h in reranked] == [hits[i].id for i in np.argsort(-scores, kind="stable")]
    assert [h.rerank_score for h in reranked] == pytest.approx(np.sort(scores)[::-1].tolist())


def test_loaded_once_per_spec_and_device(blip_folder):
    clear_reranker_cache()
    first = make_reranker(f"blip-itm:{blip_folder}", device="cpu")
    again = make_reranker(f"blip-itm:{blip_folder}", device="cpu")
    other_precision = make_reranker(f"blip-itm:{blip_folder}", device="cpu", precision="fp32")
    assert first is again and other_precision is not first
    clear_reranker_cache()
    assert make_reranker(f"blip-itm:{blip_folder}", device="cpu") is not first
    clear_reranker_cache()


def test_offline_hub_id_fails_at_once_with_one_clear_sentence(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(ModelLoadError, match="hub is unreachable.*twinrank models pull"):
        make_reranker("blip-itm:someone/blip-not-in-cache", device="cpu")
    assert time.perf_counter() - started < 5  # no retry loop against the hub


def test_bad_sources_are_clear_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="neither a model folder nor a Hugging Face id"):
        make_reranker(f"blip-itm:{tmp_path / 'missing'}", device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="Could not load the BLIP model"):
        make_reranker(f"blip-itm:{tmp_path / 'empty'}", device="cpu")


def test_rerank_command_with_blip(blip_folder, images, reranker):
    query = "a blue circle"
    expected = reranker.score_images(query, [open_rgb(p) for p in images])
    result = CliRunner().invoke(app, ["rerank", query, *map(str, images), "--reranker",
                                      f"blip-itm:{blip_folder}", "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["path"] for r in rows] == [str(images[i]) for i in np.argsort(-expected)]
    assert "Loading weights" not in result.output


def test_search_client_reranks_with_blip_by_spec(blip_folder, images, tmp_path, reranker):
    from twinrank.ingest import IngestConfig, run_ingest
    from twinrank.ingest.collection import collection_info
    from twinrank.models import create_model
    from twinrank.models.encode import ImageEmbedder
    from twinrank.search import SearchClient
    from twinrank.store import open_store

    model = create_model("twinrank-tiny", device="cpu")
    store = open_store(tmp_path / "store", collection_info(model, "twinrank-tiny"))
    run_ingest(IngestConfig(root=images[0].parent, progress=False), ImageEmbedder(model), store)
    with SearchClient(store, model=model, reranker=f"blip-itm:{blip_folder}") as client:
        assert client.reranker is reranker  # the loaded one, not a second copy
        hits = client.search("a red square", k=5)
    expected = reranker.score_images("a red square", [open_rgb(h.path) for h in hits])
    assert [h.rerank_score for h in hits] == pytest.approx(np.sort(expected)[::-1].tolist())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_blip_on_cuda_agrees_with_cpu(blip_folder, images, reranker):
    pil = [open_rgb(p) for p in images]
    on_cpu = reranker.score_images("a red circle", pil)
    exact = make_reranker(f"blip-itm:{blip_folder}", device="cuda", precision="fp32")
    assert exact.device.type == "cuda" and exact is not reranker
    assert np.allclose(exact.score_images("a red circle", pil), on_cpu,
                       atol=1e-3 * (1 + np.ptp(on_cpu)))
    half = make_reranker(f"blip-itm:{blip_folder}", device="cuda")  # bf16/fp16 autocast
    assert half.dtype in (torch.float16, torch.bfloat16)
    assert np.corrcoef(half.score_images("a red circle", pil), on_cpu)[0, 1] > 0.95
    captions = half.score_captions(pil[0], ["a red circle", "two green squares"])
    assert captions.shape == (2,) and np.isfinite(captions).all()

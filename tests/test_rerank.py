"""The fused reranker, score blending, the reranker registry and the rerank command."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from conftest import make_image
from typer.testing import CliRunner

from twinrank.cli import app
from twinrank.ingest import IngestConfig, run_ingest
from twinrank.ingest.collection import collection_info
from twinrank.models import create_model
from twinrank.models.device import pick_device
from twinrank.models.encode import ImageEmbedder
from twinrank.rerank import FusedReranker, available_rerankers, make_reranker
from twinrank.rerank.base import CrossEncoder, ImageReadError, open_rgb
from twinrank.rerank.registry import parse_reranker_spec
from twinrank.search import SearchClient
from twinrank.search.hits import Hit
from twinrank.search.ranking import apply_scores, rerank_hits
from twinrank.store import open_store

QUERY = "a red circle left of a blue square"


@pytest.fixture(scope="module")
def model():
    return create_model("twinrank-tiny", device="cpu")


@pytest.fixture(scope="module")
def indexed(model, tmp_path_factory):
    """An embedded store holding 12 images, and the bi-encoder's top 12 for QUERY."""
    root = tmp_path_factory.mktemp("rerank_images")
    for i in range(12):
        make_image(root / f"img{i:02d}.png", seed=100 + i)
    store = open_store(root.parent / "store", collection_info(model, "twinrank-tiny"))
    run_ingest(IngestConfig(root=root, batch_size=6, progress=False), ImageEmbedder(model), store)
    client = SearchClient(store, model=model, reranker=None)
    hits = client.search(QUERY, k=12, rerank=False)
    yield client, list(hits)
    client.close()


class HideTokens:
    """A store that has lost the cached tokens of some points (an older collection)."""

    def __init__(self, store, hidden):
        self.store, self.hidden = store, set(hidden)

    def get_tokens(self, ids):
        return {i: t for i, t in self.store.get_tokens(ids).items() if i not in self.hidden}


def head_scores(model, query, tokens):
    """The fusion head's logits computed by hand: one text, k cached token sets."""
    with torch.no_grad():
        text = model.encode_text(model.tokenize([query]))
        k = tokens.shape[0]
        return model.match_logit(text.text_tokens.expand(k, -1, -1),
                                 text.text_mask.expand(k, -1), tokens).numpy()


def test_reranked_order_equals_sorting_by_the_heads_scores(model, indexed):
    client, hits = indexed
    cached = client.store.get_tokens([h.id for h in hits])
    tokens = torch.from_numpy(np.stack([cached[h.id] for h in hits]))
    expected = head_scores(model, QUERY, tokens)
    reranked = rerank_hits(make_reranker("fused", model, client.store), QUERY, hits)
    assert [h.id for h in reranked] == [hits[i].id for i in np.argsort(-expected, kind="stable")]
    assert np.allclose([h.rerank_score for h in reranked], np.sort(expected)[::-1], atol=1e-5)
    assert sorted(h.bi_rank for h in reranked) == list(range(1, 13))
    assert [h.rerank_rank for h in reranked] == list(range(1, 13))


def test_missing_tokens_are_recomputed_from_files_with_one_warning(model, indexed, caplog):
    client, hits = indexed
    full = FusedReranker(model, client.store).score(QUERY, hits)
    partial = FusedReranker(model, HideTokens(client.store, [h.id for h in hits[::3]]))
    with caplog.at_level(logging.WARNING, logger="twinrank.rerank.fused"):
        first = partial.score(QUERY, hits)
        second = partial.score("a green square", hits)
    warnings = [r for r in caplog.records if "no cached reranker tokens" in r.getMessage()]
    assert len(warnings) == 1 and "4 candidate(s)" in warnings[0].getMessage()
    assert np.allclose(first, full, atol=1e-3)
    assert second.shape == (12,) and not np.allclose(second, first)


def test_image_query_ranks_captions_consistently_with_text_query(model, indexed):
    client, hits = indexed
    reranker = make_reranker("fused", model, client.store)
    assert isinstance(reranker, CrossEncoder)
    image = open_rgb(hits[0].path)
    captions = ["a red circle", "a blue square left of a green circle", "two yellow stars"]
    from_image = reranker.score_captions(image, captions)
    one_by_one = [reranker.score_images(c, [image])[0] for c in captions]
    assert np.allclose(from_image, one_by_one, atol=1e-4)
    cached_tokens = client.store.get_tokens([hits[0].id])[hits[0].id]
    assert np.allclose(reranker.score_captions(cached_tokens, captions), from_image, atol=1e-3)
    assert reranker.score_captions(image, []).shape == (0,)


def test_score_options_blend_and_keep_both_stages():
    hits = [Hit(id=c, path=c, score=s, bi_score=s, bi_rank=i + 1)
            for i, (c, s) in enumerate([("a", 0.9), ("b", 0.5), ("c", 0.1), ("d", 0.0)])]
    rerank = np.array([1.0, 3.0, 2.0, 0.0])
    alone = apply_scores(hits, rerank)
    assert [h.id for h in alone] == ["b", "c", "a", "d"]
    assert [h.score for h in alone] == [h.rerank_score for h in alone] == [3.0, 2.0, 1.0, 0.0]
    mostly_bi = apply_scores(hits, rerank, bi_weight=100.0)
    assert [h.id for h in mostly_bi] == ["a", "b", "c", "d"]
    assert [h.rerank_score for h in mostly_bi] == [1.0, 3.0, 2.0, 0.0]  # still kept
    blip = {h.id: h for h in apply_scores(hits, rerank, bi_weight=1.0)}  # BLIP's ITM + ITC
    assert blip["a"].score == pytest.approx(1.0 + 0.9)
    assert blip["b"].score == pytest.approx(3.0 + 0.5)
    assert [blip[c].bi_rank for c in "abcd"] == [1, 2, 3, 4]
    for bad in (-0.5, float("nan")):
        with pytest.raises(ValueError, match=">= 0"):
            apply_scores(hits, rerank, bi_weight=bad)
    with pytest.raises(ValueError, match="Expected 4"):
        apply_scores(hits, rerank[:3])


def test_client_takes_reranker_specs_and_bi_weight(model, indexed):
    client, hits = indexed
    plain = SearchClient(client.store, model=model, reranker="none")
    assert plain.reranker is None
    assert "rerank_ms" not in plain.search(QUERY, k=3).timings
    bi_only = SearchClient(client.store, model=model, reranker="fused", bi_weight=1e6,
                           rerank_top_k=12)
    blended = bi_only.search(QUERY, k=12)
    assert [h.id for h in blended] == [h.id for h in hits]
    assert all(h.rerank_score is not None for h in blended)
    assert bi_only.stats()["reranker"] == "fused"


def test_registry_lists_and_parses_specs(model):
    kinds = available_rerankers()
    assert [k.name for k in kinds] == ["fused", "blip-itm", "none"]
    assert all(k.description and k.example for k in kinds)
    kind, argument = parse_reranker_spec("blip-itm")
    assert (kind.name, argument) == ("blip-itm", "Salesforce/blip-itm-base-coco")
    assert parse_reranker_spec("blip-itm:/models/blip")[1] == "/models/blip"
    assert make_reranker("none", model) is None
    with pytest.raises(ValueError, match="Unknown reranker 'cross'.*fused"):
        make_reranker("cross", model)
    with pytest.raises(ValueError, match="takes no"):
        make_reranker("fused:extra", model)
    with pytest.raises(ValueError, match="needs the collection.s model"):
        make_reranker("fused")


def test_cpu_is_used_when_asked_and_runs_in_fp32(model):
    assert pick_device("cpu").type == "cpu"
    reranker = make_reranker("fused", model, None, device="cpu")
    assert reranker.dtype == torch.float32 and reranker.model.device.type == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error shown without CUDA")
def test_asking_for_cuda_without_it_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA is not available"):
        pick_device("cuda")


def test_rerank_command_orders_files_by_the_heads_scores(model, tmp_path):
    paths = [make_image(tmp_path / f"f{i}.png", seed=200 + i) for i in range(4)]
    expected = FusedReranker(model, None).score_images(QUERY, [open_rgb(p) for p in paths])
    result = CliRunner().invoke(app, ["rerank", QUERY, *map(str, paths), "--model",
                                      "twinrank-tiny", "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["path"] for r in rows] == [str(paths[i]) for i in np.argsort(-expected)]
    assert [r["rank"] for r in rows] == [1, 2, 3, 4]
    assert {r["given"] for r in rows} == {1, 2, 3, 4}
    plain = CliRunner().invoke(app, ["rerank", QUERY, *map(str, paths), "--model",
                                     "twinrank-tiny"])
    assert plain.exit_code == 0 and "(given #" in plain.output


def test_rerank_command_errors_are_one_line(tmp_path):
    good = make_image(tmp_path / "ok.png", seed=1)
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    runner = CliRunner()
    for args, message in [
        ([str(good), str(tmp_path / "missing.png"), "--model", "twinrank-tiny"], "does not exist"),
        ([str(good), str(tmp_path / "bad.jpg"), "--model", "twinrank-tiny"], "Cannot read image"),
        ([str(good)], "needs a twinrank model"),
        ([str(good), "--reranker", "nope"], "Unknown reranker"),
        ([str(good), "--reranker", "none"], "nothing to score"),
    ]:
        result = runner.invoke(app, ["rerank", QUERY, *args])
        assert result.exit_code == 1, (args, result.output)
        assert message in result.output and "Traceback" not in result.output


def test_search_command_takes_reranker_and_bi_weight(model, indexed, tmp_path):
    root = tmp_path / "imgs"
    for i in range(5):
        make_image(root / f"s{i}.png", seed=300 + i)
    runner = CliRunner()
    store = tmp_path / "store"
    assert runner.invoke(app, ["ingest", str(root), "--store", str(store),
                              "--model", "twinrank-tiny"]).exit_code == 0
    bi = runner.invoke(app, ["search", "blocks", "--store", str(store), "--json", "-k", "5",
                             "--reranker", "fused", "--bi-weight", "1000000"])
    rows = json.loads(bi.output)
    assert [r["bi_rank"] for r in rows] == [1, 2, 3, 4, 5]
    assert all(r["rerank_score"] is not None for r in rows)
    none = runner.invoke(app, ["search", "blocks", "--store", str(store), "--json",
                               "--reranker", "none"])
    assert all(r["rerank_rank"] is None for r in json.loads(none.output))
    bad = runner.invoke(app, ["search", "blocks", "--store", str(store), "--bi-weight", "-1"])
    assert bad.exit_code != 0


def test_open_rgb_names_the_file(tmp_path):
    with pytest.raises(ImageReadError, match="missing.png"):
        open_rgb(tmp_path / "missing.png")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_reranking_agrees_with_cpu(model, indexed):
    import copy

    client, hits = indexed
    on_cpu = FusedReranker(model, client.store).score(QUERY, hits)
    cuda_model = copy.deepcopy(model).to(pick_device(None))
    assert cuda_model.device.type == "cuda"
    exact = make_reranker("fused", cuda_model, client.store, precision="fp32")
    assert np.allclose(exact.score(QUERY, hits), on_cpu, atol=1e-3 * (1 + np.ptp(on_cpu)))
    half = make_reranker("fused", cuda_model, client.store)  # auto: bf16/fp16 autocast
    assert half.dtype in (torch.float16, torch.bfloat16)
    assert np.corrcoef(half.score(QUERY, hits), on_cpu)[0, 1] > 0.95
    image = open_rgb(hits[0].path)
    captions = ["a red circle", "two blue squares", "a green square"]
    assert np.allclose(exact.score_captions(image, captions),
                       FusedReranker(model, None).score_captions(image, captions),
                       atol=1e-3 * (1 + np.ptp(on_cpu)))


@pytest.mark.parametrize(("layers", "pooled"), [(1, False), (3, False), (2, True)])
def test_one_query_shortcut_gives_the_heads_own_logits(layers, pooled):
    from twinrank.models.config import FusionConfig
    from twinrank.models.fusion import FusionHead
    from twinrank.rerank.one_query import one_query_logits, supports_one_query

    torch.manual_seed(layers)
    config = FusionConfig(width=32, layers=layers, heads=4, pooled_match=pooled)
    head = FusionHead(config, 24, 40).eval()
    if pooled:  # the bilinear term starts at zero; a trained one is not (the demo model's)
        torch.nn.init.normal_(head.pooled.weight, std=0.5)
    text = torch.randn(1, 7, 24)
    mask = torch.tensor([[True] * 5 + [False] * 2])  # a padded text
    image_tokens = head.project_image(torch.randn(9, 6, 40))
    with torch.no_grad():
        expected = head(text.expand(9, -1, -1), mask.expand(9, -1), image_tokens)
        fast = one_query_logits(head, text, mask, image_tokens)
    assert supports_one_query(head) and not supports_one_query(head.train())
    assert expected.std() > 1e-3
    assert torch.allclose(fast, expected, atol=1e-5)

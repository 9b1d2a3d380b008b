from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from twinrank.models import (
    ModelLoadError,
    SepTwinModel,
    TwinModel,
    create_model,
    model_id,
    save_model,
)
from twinrank.models.config import FusionConfig
from twinrank.models.fusion import FusionHead


def test_shapes_of_both_encoders_and_the_head(tiny_model):
    ids = tiny_model.tokenize(["a red circle", "a small blue square left of a large red one"])
    with torch.no_grad():
        text = tiny_model.encode_text(ids)
        image = tiny_model.encode_image(torch.randn(2, 3, 32, 32))
        logits = tiny_model.match_logit(text.text_tokens, text.text_mask, image.image_tokens)
    cfg = tiny_model.config
    assert text.text_vector.shape == (2, cfg.embed_dim)
    assert image.image_vector.shape == (2, cfg.embed_dim)
    assert image.image_tokens.shape == (2, cfg.image_token_count, cfg.fusion.width)
    assert text.text_tokens.shape[:2] == ids.shape
    assert logits.shape == (2,)
    assert torch.allclose(text.text_vector.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_bi_and_cross_encoder_share_the_towers(tiny_model):
    """Both losses' gradients reach the same tower parameters."""
    ids = tiny_model.tokenize(["a red circle", "a blue square"])
    pixels = torch.randn(2, 3, 32, 32)
    text = tiny_model.encode_text(ids)
    image = tiny_model.encode_image(pixels)
    bi_loss = (text.text_vector @ image.image_vector.T).diag().sum()
    grads_bi = torch.autograd.grad(bi_loss, list(tiny_model.towers.visual.parameters()),
                                   retain_graph=True, allow_unused=True)
    ce_loss = tiny_model.match_logit(text.text_tokens, text.text_mask, image.image_tokens).sum()
    grads_ce = torch.autograd.grad(ce_loss, list(tiny_model.towers.visual.parameters()),
                                   allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads_bi)
    assert any(g is not None and g.abs().sum() > 0 for g in grads_ce)


def test_cutting_text_to_the_longest_caption_is_exact(tiny_model):
    texts = ["a red circle", "a small blue square left of a large red triangle"]
    full = tiny_model.tokenizer(texts)  # padded to the full context
    with torch.no_grad():
        cut = tiny_model.encode_text(tiny_model.tokenize(texts)).text_vector
        reference = torch.nn.functional.normalize(tiny_model.clip.text(full)[0], dim=-1)
    assert tiny_model.tokenize(texts).shape[1] < full.shape[1]
    assert torch.allclose(cut, reference, atol=1e-5)


def test_random_init_is_seeded():
    a, b = create_model("twinrank-tiny"), create_model("twinrank-tiny")
    c = create_model("twinrank-tiny", seed=1)
    assert model_id(a) == model_id(b) != model_id(c)
    assert torch.equal(a.head.out.weight, b.head.out.weight)
    assert not torch.equal(a.head.out.weight, c.head.out.weight)


def test_save_then_load_gives_identical_outputs(tiny_model, tmp_path: Path):
    folder = save_model(tiny_model, tmp_path / "m")
    loaded = create_model(folder)
    ids = tiny_model.tokenize(["two shapes"])
    pixels = torch.randn(1, 3, 32, 32)

    def outputs(model):
        with torch.no_grad():
            return model.encode_text(ids).text_vector, model.encode_image(pixels).image_tokens

    for ours, theirs in zip(outputs(tiny_model), outputs(loaded), strict=True):
        assert torch.equal(ours, theirs)
    assert model_id(loaded).startswith("twinrank-tiny@")


def test_pooling_tokens_for_big_towers():
    model = create_model("ViT-B-32")
    with torch.no_grad():
        tokens = model.encode_image(torch.randn(1, 3, 224, 224)).image_tokens
    assert tokens.shape == (1, 16, model.config.fusion.width)  # 7x7 patches pooled to 4x4


def test_offline_pretrained_fails_fast_with_one_clear_sentence(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    with pytest.raises(ModelLoadError, match="unreachable.*models pull clip-b32.*--model demo"):
        create_model("ViT-B-32", pretrained="laion2b_s34b_b79k")  # the clip-b32 preset's tag
    with pytest.raises(ModelLoadError, match="unreachable.*--pretrained.*--model demo"):
        create_model("ViT-B-16", pretrained="laion2b_s34b_b88k")  # no preset: a file then
    with pytest.raises(ModelLoadError, match="not in the Hugging Face cache.*models pull"):
        create_model("clip-b32")


@pytest.mark.parametrize("name", ["no-such-model", "missing/folder"])
def test_unknown_model_names_the_fix(name):
    with pytest.raises(ModelLoadError, match="ViT-B-32"):
        create_model(name)


def test_fusion_head_ignores_text_padding():
    head = FusionHead(FusionConfig(width=32, layers=1, heads=2), 16, 24).eval()
    text, image = torch.randn(1, 3, 16), head.project_image(torch.randn(1, 4, 24))
    padded = torch.cat([text, torch.randn(1, 2, 16)], dim=1)
    mask = torch.tensor([[True, True, True, False, False]])
    with torch.no_grad():
        short = head(text, torch.ones(1, 3, dtype=torch.bool), image)
        long = head(padded, mask, image)
    assert torch.allclose(short, long, atol=1e-5)




def _local_hf_tokenizer(folder: Path):
    """A real Hugging Face tokenizer, built here (no download), that pads with id 1 like
    XLM-R, wrapped the way open_clip wraps a hub tokenizer."""
    from open_clip.tokenizer import HFTokenizer
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as token_models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "a": 4, "red": 5, "circle": 6}
    inner = Tokenizer(token_models.WordLevel(vocab, unk_token="<unk>"))
    inner.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=inner, bos_token="<s>", eos_token="</s>",
                            pad_token="<pad>", unk_token="<unk>").save_pretrained(folder)
    return HFTokenizer(str(folder), context_length=8)


def test_text_mask_follows_the_tokenizers_pad_id(tiny_model, tmp_path) -> None:
    assert tiny_model.pad_id == 0  # open_clip's own tokenizer pads with 0
    tiny_model.tokenizer = _local_hf_tokenizer(tmp_path / "tok")
    assert tiny_model.pad_id == 1
    ids = tiny_model.tokenize(["a red circle", "a"])
    assert ids.tolist() == [[4, 5, 6], [4, 1, 1]]  # cut to the longest text, not the context
    mask = tiny_model.encode_text(ids).text_mask
    assert mask.tolist() == [[True, True, True], [True, False, False]]


def test_resizing_the_image_input_interpolates_only_the_position_table(tmp_path):
    import open_clip.model

    from twinrank.models import with_image_size
    from twinrank.models.factory import resize_positions
    from twinrank.models.pair import SepTwinModel

    model = create_model("twinrank-tiny")
    bigger = with_image_size(model, 48)
    assert bigger.config.image_size == 48 and model.config.image_size == 32  # a copy
    assert bigger.config.image_token_count == 36 and with_image_size(model, 32) is model
    old, new = model.state_dict(), bigger.state_dict()
    key = "clip.visual.positional_embedding"
    assert old[key].shape == (17, 128) and new[key].shape == (37, 128)
    assert all(torch.equal(old[k], new[k]) for k in old if k != key)
    reference = {"visual.positional_embedding": old[key].clone()}
    open_clip.model.resize_pos_embed(reference, bigger.clip)  # open_clip's own resizer
    assert torch.allclose(new[key], reference["visual.positional_embedding"], atol=1e-6)
    with torch.no_grad():
        image = bigger.encode_image(torch.randn(2, 3, 48, 48))
    assert image.image_tokens.shape[:2] == (2, 36)
    assert bigger.preprocess(Image.new("RGB", (100, 80))).shape == (3, 48, 48)
    save_model(bigger, tmp_path / "m")  # and it saves and loads at its new size
    assert create_model(tmp_path / "m").config.image_size == 48
    sep = with_image_size(SepTwinModel(model.config), 48)
    assert isinstance(sep, SepTwinModel) and sep.config.image_size == 48
    with pytest.raises(ValueError, match="multiple of the patch size"):
        with_image_size(model, 50)
    with pytest.raises(ValueError, match="square patch grid"):
        resize_positions(torch.zeros(12, 4), 17)


def test_growing_the_fusion_head_keeps_every_score_until_it_trains():
    from twinrank.models import with_fusion_layers
    from twinrank.models.pair import SepTwinModel

    model = create_model("twinrank-tiny")
    grown = with_fusion_layers(model, 4)
    assert len(grown.head.layers) == 4 and grown.config.fusion.layers == 4
    assert with_fusion_layers(model, 2) is model and len(model.head.layers) == 2
    ids = model.tokenize(["a red circle", "two blue squares left of a star"])
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        scores = [m.match_logit(m.encode_text(ids).text_tokens, m.encode_text(ids).text_mask,
                                m.encode_image(pixels).image_tokens) for m in (model, grown)]
    assert torch.allclose(scores[0], scores[1], atol=1e-5)
    new_layer = grown.head.layers[3]
    assert not new_layer.linear2.weight.any() and new_layer.linear1.weight.any()
    sep = with_fusion_layers(SepTwinModel(model.config), 3)
    assert isinstance(sep, SepTwinModel) and sep.config.fusion.layers == 3
    with pytest.raises(ValueError, match="can only grow"):
        with_fusion_layers(model, 1)


def test_sep_pair_embeds_in_bf16_with_both_image_towers_cast(tiny_model: TwinModel) -> None:
    """A SEP pair runs two image towers at ingest; with bf16 both must be cast (the second
    stayed fp32 and encode_image raised a dtype error), and the caller's pair stays fp32."""
    from twinrank.models.encode import ImageEmbedder

    cross = create_model("twinrank-tiny", seed=1)
    pair = SepTwinModel.from_pair(tiny_model, cross)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), np.uint8))
    vectors, tokens = ImageEmbedder(pair, precision="bf16").embed([image])
    exact, _ = ImageEmbedder(pair, precision="fp32").embed([image])
    assert vectors.shape == (1, 64) and tokens.shape == (1, *pair.token_shape)
    assert float(vectors[0] @ exact[0]) > 0.99
    assert next(pair.cross_clip.visual.parameters()).dtype == torch.float32

"""The pixels the reference sees (issue 34): ingest's decode of camera-size photos against
each family's own preprocessing of the same file, and the rerankers that re-read it.

Ingest decodes a BLIP model's pictures at full size, so the vectors it stores equal those
of ``BlipProcessor`` on the file, and its cached tokens differ from a reader of the file by
their float16 rounding alone. It drafts an open_clip model's JPEGs to twice the input size
(``models.images.DRAFT_MARGIN``): the stored vector stays within a few 1e-3 of open_clip's
own transform, and a reader that opens the file as ingest does (``decode_size``) gets the
cached tokens back. Photos, generated here: a 12-megapixel camera JPEG, a phone JPEG
stored sideways with an EXIF orientation, a PNG. Models: tiny random ones at the published
input sizes (BLIP 384 px, ViT-B-32 224 px), so pictures are resized as the real ones are.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image, ImageOps

from bench.decode_bench import camera_jpeg, camera_photo, draft_margin
from twinrank.ingest import IngestConfig, run_ingest
from twinrank.ingest.collection import collection_info
from twinrank.models import create_model, images
from twinrank.models.blip_random import save_random_blip
from twinrank.models.encode import ImageEmbedder, decode_size
from twinrank.rerank import FusedReranker
from twinrank.rerank.base import Candidate
from twinrank.store import open_store

# Tolerances, measured on these photos and models. The same float32 arithmetic batched
# another way: vectors within 1e-6. Tokens go through the store as float16: each within
# half a float16 step (2^-11 relative) of the reference's. Rerank scores over them may
# then differ by what that rounding does to a score, measured per test as the largest
# change rounding the reference's own tokens makes (4.8e-3 here on logits spread over
# ~5; a drafted decode moved them by 3e-2 to 8e-2). open_clip's drafted JPEGs moved the
# tiny model's vectors by 1.1e-3 to 1.3e-3 (drafting to 1x: up to 2.3e-3).
EXACT = 1e-5
FP16_STEP = 2.0**-11
FP16_MARGIN = 1.5
OPEN_CLIP_DRAFTED = 3e-3
QUERIES = ["a dog on the beach", "a red car parked by a wall", "two people at a table"]
TINY_224 = {  # ViT-B-32's geometry (224 px, 32 px patches) at a tiny width
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "patch_size": 32,
                   "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2,
                 "layers": 1},
}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("camera")
    (root / "camera.jpg").write_bytes(camera_jpeg((4000, 3000), seed=1))
    (root / "phone.jpg").write_bytes(camera_jpeg((4032, 3024), seed=2, orientation=6))
    camera_photo((1600, 1200), seed=3).save(root / "scan.png")
    return root


@pytest.fixture(scope="module")
def blip(tmp_path_factory):
    folder = save_random_blip(tmp_path_factory.mktemp("blip") / "tiny-384", "tiny-384",
                              init_std=0.3)
    return create_model(f"blip:{folder}", device="cpu")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    config = tmp_path_factory.mktemp("configs") / "pixels-tiny-224.json"
    config.write_text(json.dumps(TINY_224))
    open_clip.add_model_config(config)
    return create_model("pixels-tiny-224", device="cpu")


def reference_image(path: Path) -> Image.Image:
    """The file as a reference reader sees it: all of it, turned upright, RGB."""
    with Image.open(path) as image:
        return ImageOps.exif_transpose(image).convert("RGB")


def blip_reference(blip, path: Path) -> torch.Tensor:
    pixels: torch.Tensor = blip.processor(images=reference_image(path),
                                          return_tensors="pt")["pixel_values"][0]
    return pixels


def clip_reference(path: Path) -> torch.Tensor:
    preprocess = open_clip.create_model_and_transforms("pixels-tiny-224", pretrained=None)[2]
    pixels: torch.Tensor = preprocess(reference_image(path))
    return pixels


def ingest_pixels(embedder: ImageEmbedder, path: Path) -> torch.Tensor:
    """What ingest's decode workers hand the model for ``path``."""
    decoded = images.decode_image(path.read_bytes(), embedder.target_size)
    return embedder.pixels_from_arrays([embedder.prepare(decoded.image)])[0]


@torch.inference_mode()
def reference_encoding(model, pixels: list[torch.Tensor]):
    return model.encode_image(torch.stack(pixels))


def ingested(model, source: str, root: Path, store_path: Path):
    """Ingest ``root`` through the runner into Qdrant Edge; the store and, per file name,
    (point id, stored vector, stored tokens, payload)."""
    store = open_store(store_path, collection_info(model, source))
    report = run_ingest(IngestConfig(root=root, batch_size=2, progress=False,
                                     precision="fp32"),
                        ImageEmbedder(model, precision="fp32"), store)
    assert report.embedded == 3 and not report.failed
    payloads = dict(store.iter_payloads())
    vectors, tokens = store.get_vectors(list(payloads)), store.get_tokens(list(payloads))
    stored = {Path(p["paths"][0]).name: (i, vectors[i], tokens[i], p)
              for i, p in payloads.items()}
    return store, stored


def fp16_bound(reranker: FusedReranker, query: str, tokens: torch.Tensor) -> float:
    """How far rounding the reference's tokens to float16 moves its scores, with margin."""
    exact = reranker.score_tokens(query, tokens)
    rounded = reranker.score_tokens(query, tokens.half().float())
    return FP16_MARGIN * float(np.abs(rounded - exact).max()) + 1e-6


def test_blip_decodes_in_full_and_its_pixels_are_blip_processors(blip, photos):
    embedder = ImageEmbedder(blip, precision="fp32")
    assert decode_size(blip) is None and embedder.target_size is None
    for path in sorted(photos.iterdir()):
        assert torch.allclose(ingest_pixels(embedder, path), blip_reference(blip, path),
                              atol=1e-6), path.name


def test_open_clip_drafts_jpegs_to_twice_its_input_and_stays_near_its_own_transform(
        clip, photos):
    embedder = ImageEmbedder(clip, precision="fp32")
    assert embedder.target_size == 224
    drafted = images.open_image(photos / "camera.jpg", target_size=embedder.target_size)
    assert drafted.size == (1000, 750)  # 1/4 scale: short side >= 2 x 224, not 4000 x 3000
    upright = images.open_image(photos / "phone.jpg", target_size=embedder.target_size)
    assert upright.size == (756, 1008)  # stored 4032 x 3024, turned by its EXIF orientation
    paths = sorted(photos.iterdir())
    ours = reference_encoding(clip, [ingest_pixels(embedder, p) for p in paths])
    theirs = reference_encoding(clip, [clip_reference(p) for p in paths])
    distance = (ours.image_vector - theirs.image_vector).norm(dim=-1)  # (3,)
    by_name = dict(zip([p.name for p in paths], distance.tolist(), strict=True))
    assert by_name["scan.png"] < EXACT  # PNG: never drafted, the same pixels
    assert 0 < by_name["camera.jpg"] < OPEN_CLIP_DRAFTED
    assert 0 < by_name["phone.jpg"] < OPEN_CLIP_DRAFTED


def test_blip_ingest_stores_the_reference_and_every_reranker_agrees(blip, photos, tmp_path):
    """Through the runner into Qdrant Edge: stored vectors are BlipProcessor's, stored
    tokens its tokens rounded to float16, and the cached-token reranker, the
    read-the-image blip-itm and the fused reranker's file fallback score alike."""
    from twinrank.rerank.itm import BlipItmReranker

    store, stored = ingested(blip, blip.source, photos, tmp_path / "store")
    names = sorted(stored)
    reference = reference_encoding(blip, [blip_reference(blip, photos / n) for n in names])
    for row, name in enumerate(names):
        _, vector, tokens, payload = stored[name]
        np.testing.assert_allclose(vector, reference.image_vector[row].numpy(), atol=EXACT)
        np.testing.assert_allclose(tokens, reference.image_tokens[row].numpy(),
                                   rtol=FP16_STEP, atol=EXACT)
    assert (stored["phone.jpg"][3]["width"], stored["phone.jpg"][3]["height"]) == (3024, 4032)
    candidates = [Candidate(stored[n][0], str(photos / n)) for n in names]
    cached = FusedReranker(blip, store)
    from_files = FusedReranker(blip, None)
    itm = BlipItmReranker(blip.retrieval, blip.processor, device="cpu", precision="fp32")
    drafted = draft_tokens(blip, photos / "camera.jpg")
    for query in QUERIES:
        read = cached.score_tokens(query, reference.image_tokens)
        bound = fp16_bound(cached, query, reference.image_tokens)
        assert np.abs(cached.score(query, candidates) - read).max() <= bound
        assert np.abs(from_files.score(query, candidates) - read).max() <= bound
        assert np.abs(itm.score(query, candidates) - read).max() <= 1e-4  # fp32 both
        # the bound has teeth: the old draft to 1x moved the camera JPEG's score past it
        assert abs(cached.score_tokens(query, drafted)[0] - read[names.index("camera.jpg")]) \
            > bound
    store.close()


def draft_tokens(model, path: Path) -> torch.Tensor:
    """Tokens (1, T, W) from the camera JPEG drafted as ingest did before issue 34."""
    embedder = ImageEmbedder(model, precision="fp32")
    with draft_margin(1):
        image = images.open_image(path, target_size=int(model.image_size))
    return torch.from_numpy(embedder.embed([image])[1]).float()


def test_open_clip_ingest_stores_near_the_reference_and_readers_as_ingest_agree(
        clip, photos, tmp_path):
    """Through the runner into Qdrant Edge: vectors within the draft's deviation of
    open_clip's own transform (PNG: equal), and a reranker reading the files as ingest
    does (``decode_size``) gets the cached scores to float16 rounding."""
    store, stored = ingested(clip, "pixels-tiny-224", photos, tmp_path / "store")
    names = sorted(stored)
    reference = reference_encoding(clip, [clip_reference(photos / n) for n in names])
    for row, name in enumerate(names):
        _, vector, tokens, _ = stored[name]
        distance = np.linalg.norm(vector - reference.image_vector[row].numpy())
        assert distance < (EXACT if name.endswith(".png") else OPEN_CLIP_DRAFTED), name
    np.testing.assert_allclose(stored["scan.png"][2],
                               reference.image_tokens[names.index("scan.png")].numpy(),
                               rtol=FP16_STEP, atol=EXACT)
    reranker = FusedReranker(clip, store)
    embedder = ImageEmbedder(clip, precision="fp32")
    exact = reference_encoding(clip, [ingest_pixels(embedder, photos / n) for n in names])
    as_ingest = reranker.encode_tokens(  # a reader of the files that opens them as ingest
        [images.open_image(photos / n, target_size=decode_size(clip)) for n in names])
    candidates = [Candidate(stored[n][0], str(photos / n)) for n in names]
    for query in QUERIES:
        read = reranker.score_tokens(query, exact.image_tokens)
        bound = fp16_bound(reranker, query, exact.image_tokens)
        assert np.abs(reranker.score(query, candidates) - read).max() <= bound
        assert np.abs(reranker.score_tokens(query, as_ingest) - read).max() <= bound
    store.close()


def test_fused_file_fallback_reads_an_open_clip_jpeg_as_ingest_does(clip, photos, tmp_path):
    store, stored = ingested(clip, "pixels-tiny-224", photos, tmp_path / "store")
    candidate = [Candidate(stored["camera.jpg"][0], str(photos / "camera.jpg"))]
    embedder = ImageEmbedder(clip, precision="fp32")
    tokens = reference_encoding(clip, [ingest_pixels(embedder, photos / "camera.jpg")])
    cached, from_files = FusedReranker(clip, store), FusedReranker(clip, None)
    try:
        for query in QUERIES:
            bound = fp16_bound(cached, query, tokens.image_tokens)
            assert np.abs(from_files.score(query, candidate) - cached.score(query, candidate)) \
                .max() <= bound
    finally:
        store.close()

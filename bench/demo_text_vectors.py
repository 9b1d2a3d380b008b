"""Real image and text vectors from a trained twinrank model on generated scenes.

    python bench/demo_text_vectors.py MODEL_DIR OUT.npz

Only the model factory and the scene generator are used.
``python -m bench.store_bench --real-vectors OUT.npz`` then measures
HNSW recall for the model's text queries (``store_bench.real_text_queries``), and
``python -m bench.ann_bench --real-vectors OUT.npz`` the two-stage search over ``centred``
(the file also holds the model's mean text vector, ``text_mean``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch


def export(model_dir: str, out: Path, n_images: int = 30_000, n_texts: int = 200) -> None:
    from twinrank.captions.scenes import all_scene_specs, captions_for, render_scene
    from twinrank.models import create_model
    from twinrank.models.gap import mean_text_vector

    torch.set_num_threads(2)
    model = create_model(model_dir, device="cpu").eval()
    rng = np.random.default_rng(0)
    specs = all_scene_specs()  # 9,660 scenes; images reuse them with other positions/tints
    image_specs = rng.choice(len(specs), n_images, replace=True)
    text_specs = rng.choice(len(specs), n_texts, replace=False)
    size = model.config.image_size
    vectors = []
    with torch.inference_mode():
        for start in range(0, n_images, 250):
            images = [render_scene(specs[i], size, rng) for i in image_specs[start:start + 250]]
            pixels = model.preprocess_images(images)
            vectors.append(model.encode_image(pixels).image_vector.float().numpy())
        captions = [captions_for(specs[i], "en", rng)[0] for i in text_specs]
        texts = model.encode_text(model.tokenize(captions)).text_vector.float().numpy()
    text_mean = mean_text_vector(model)  # the model's side of the modality gap (models/gap.py)
    np.savez(out, images=np.concatenate(vectors), texts=texts, captions=np.array(captions),
             text_mean=text_mean)


if __name__ == "__main__":
    export(sys.argv[1], Path(sys.argv[2]))

"""Synthetic compositional scenes: determinism, held-out pairs, binding-sensitive captions."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from twinrank.captions.data import read_captions_jsonl
from twinrank.captions.scenes import (
    COLOURS,
    LANGUAGES,
    SPLITS,
    ObjectSpec,
    ScenesConfig,
    SceneSpec,
    all_scene_specs,
    captions_for,
    draw_scene,
    make_scenes,
    plan_splits,
    render_scene,
)

TINY = ScenesConfig(n_train=10, n_val=4, n_test=8, n_zeroshot=8, image_size=32)
RED_CIRCLE = ObjectSpec("circle", "red", "small")
BLUE_SQUARE = ObjectSpec("square", "blue", "large")


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_same_seed_writes_identical_files_and_another_seed_does_not(tmp_path: Path) -> None:
    make_scenes(tmp_path / "a", TINY)
    make_scenes(tmp_path / "b", TINY)
    make_scenes(tmp_path / "c", replace(TINY, seed=1))
    first, second, other = (_files(tmp_path / name) for name in "abc")
    assert len(first) == 30 + 4 * 4 + 1  # images, 4 jsonl per split, scenes.json
    assert first == second
    assert first["test.en.jsonl"] != other["test.en.jsonl"]


def test_layout_and_captions_in_every_language(tmp_path: Path) -> None:
    summary = make_scenes(tmp_path, TINY)
    assert json.loads((tmp_path / "scenes.json").read_text()) == summary
    assert summary["splits"] == {"train": 10, "val": 4, "test": 8, "zeroshot": 8}
    for split in SPLITS:
        assert (tmp_path / f"{split}.jsonl").read_bytes() == (
            tmp_path / f"{split}.en.jsonl").read_bytes()
        for language in LANGUAGES:
            text = (tmp_path / f"{split}.{language}.jsonl").read_text(encoding="utf-8")
            rows = [json.loads(line) for line in text.splitlines()]
            assert len(rows) == summary["splits"][split]
            assert all(row["language"] == language and len(row["captions"]) == 3 for row in rows)
            assert rows[0]["image"] == f"images/{split}/000000.png"
    records = read_captions_jsonl(tmp_path / "zeroshot.de.jsonl")
    assert records[0].image_path.is_file() and records[0].language == "de"
    assert records[0].captions[0].startswith(("ein", "links", "oben"))


def test_heldout_pairs_appear_only_in_zeroshot() -> None:
    config = ScenesConfig()
    plan = plan_splits(config)
    heldout = set(config.heldout_pairs)
    for split in ("train", "val", "test"):
        assert not any(spec.shape_colour_pairs() & heldout for spec, _ in plan[split])
    assert all(spec.shape_colour_pairs() & heldout for spec, _ in plan["zeroshot"])
    every = [spec for items in plan.values() for spec, _ in items]
    assert len(every) == len(set(every)) == sum(config.split_sizes().values())
    trained_colours = {spec.objects[0].colour for spec, _ in plan["train"]}
    assert trained_colours == set(COLOURS)  # each colour is still seen, on other shapes


def test_test_and_zeroshot_hold_swapped_look_alikes() -> None:
    plan = plan_splits(ScenesConfig())
    for split in ("test", "zeroshot"):
        specs = {spec for spec, _ in plan[split]}
        with_look_alike = [s for s in specs if set(s.distractors()) & specs]
        assert len(with_look_alike) > 0.6 * len(specs)
        groups: dict[int, set[SceneSpec]] = {}
        for spec, group in plan[split]:
            groups.setdefault(group, set()).add(spec)
        assert any(spec.swap_colours() in members for members in groups.values()
                   for spec in members)


def test_captions_bind_attributes_to_their_objects() -> None:
    spec = SceneSpec((RED_CIRCLE, BLUE_SQUARE))
    assert captions_for(spec, "en")[0] == "a small red circle left of a large blue square"
    assert captions_for(spec, "de")[0] == (
        "ein kleiner roter Kreis links von einem großen blauen Quadrat")
    assert captions_for(spec, "fr")[0] == "un petit cercle rouge à gauche d'un grand carré bleu"
    for language in LANGUAGES:
        own = set(captions_for(spec, language))
        for look_alike in spec.distractors():
            assert not own & set(captions_for(look_alike, language))


def test_every_caption_describes_exactly_one_scene() -> None:
    for language in LANGUAGES:
        owner: dict[str, SceneSpec] = {}
        for spec in all_scene_specs():
            for caption in captions_for(spec, language):
                assert owner.setdefault(caption, spec) == spec, caption


def test_captions_shuffle_only_with_rng() -> None:
    spec = SceneSpec((RED_CIRCLE, BLUE_SQUARE), "above")
    fixed = captions_for(spec, "fr")
    shuffled = captions_for(spec, "fr", np.random.default_rng(3))
    assert fixed == captions_for(spec, "fr") and sorted(fixed) == sorted(shuffled)


def _mask_centre(image: np.ndarray, rgb: tuple[int, int, int]) -> tuple[float, float, int]:
    close = np.abs(image.astype(int) - np.array(rgb)).sum(axis=2) < 60
    ys, xs = np.nonzero(close)
    return float(xs.mean()), float(ys.mean()), int(close.sum())


@pytest.mark.parametrize("relation", ["left of", "above"])
def test_render_places_first_object_left_or_top(relation: str) -> None:
    spec = SceneSpec((RED_CIRCLE, BLUE_SQUARE), relation)
    for seed in range(5):
        image = np.asarray(render_scene(spec, 64, np.random.default_rng(seed)))
        red_x, red_y, red_area = _mask_centre(image, COLOURS["red"])
        blue_x, blue_y, blue_area = _mask_centre(image, COLOURS["blue"])
        first, second = (red_x, blue_x) if relation == "left of" else (red_y, blue_y)
        assert first < 32 < second
        assert blue_area > 2 * red_area  # large is visibly larger than small


def test_bad_config_and_folder_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="languages"):
        ScenesConfig(languages=("en", "cs"))
    with pytest.raises(ValueError, match="captions_per_image"):
        ScenesConfig(captions_per_image=9)
    with pytest.raises(ValueError, match="'pink'"):
        ScenesConfig(heldout_pairs=(("circle", "pink"),))
    with pytest.raises(ValueError, match="distinct"):
        plan_splits(ScenesConfig(n_zeroshot=5000))
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        make_scenes(tmp_path, TINY)


# --- scenes with unnamed extra objects --------------------------------------------------

EXTRAS = replace(ScenesConfig(), extra_objects=2)


def test_without_extras_nothing_changes() -> None:
    plan = plan_splits(ScenesConfig())
    assert all(not spec.extras for items in plan.values() for spec, _ in items)
    assert "extras" not in plan["test"][0][0].to_dict()


def test_extras_are_distinct_unnamed_and_never_held_out() -> None:
    plan = plan_splits(EXTRAS)
    heldout = set(EXTRAS.heldout_pairs)
    for split, items in plan.items():
        for spec, _ in items:
            assert len(spec.extras) == 2
            assert len(set(spec.objects + spec.extras)) == 4
            if split != "zeroshot":  # (there, a look-alike may move a named one to extras)
                assert not spec.shape_colour_pairs(with_extras=True) & heldout
        captions = {c for spec, _ in items for c in captions_for(spec)}
        for spec, _ in items:  # captions name only the two objects
            for extra in spec.extras:
                phrase = f"a {extra.size} {extra.colour} {extra.shape}"
                assert not any(phrase in c for c in captions_for(spec))
        assert len(captions) == 4 * len(items)  # every caption still fits one scene
    keys = [spec.key for items in plan.values() for spec, _ in items]
    assert len(keys) == len(set(keys))


def test_extras_look_alikes_trade_places_and_colours_with_an_unnamed_object() -> None:
    spec = SceneSpec((RED_CIRCLE, BLUE_SQUARE), "left of",
                     (ObjectSpec("star", "green", "small"), ObjectSpec("cross", "white", "large")))
    look_alikes = spec.distractors()
    assert spec.swap_with_extra(0) in look_alikes
    moved = spec.swap_with_extra(0)
    assert moved.objects == (ObjectSpec("star", "green", "small"), BLUE_SQUARE)
    assert RED_CIRCLE in moved.extras
    recoloured = spec.swap_colour_with_extra(1)
    assert recoloured.objects[1] == ObjectSpec("square", "green", "large")
    assert recoloured.extras[0] == ObjectSpec("star", "blue", "small")
    bag = sorted(spec.objects + spec.extras)
    for other in look_alikes:  # the same shapes, colours and sizes; different captions
        assert sorted(a.shape for a in other.objects + other.extras) == sorted(
            a.shape for a in bag)
        assert sorted(a.colour for a in other.objects + other.extras) == sorted(
            a.colour for a in bag)
        assert not set(captions_for(spec)) & set(captions_for(other))


def test_render_puts_the_named_pair_in_one_row_and_the_extras_in_the_other() -> None:
    yellow, white = ObjectSpec("circle", "yellow", "small"), ObjectSpec("cross", "white", "small")
    spec = SceneSpec((RED_CIRCLE, BLUE_SQUARE), "left of", (yellow, white))
    rows = set()
    for seed in range(6):
        image = np.asarray(render_scene(spec, 64, np.random.default_rng(seed)))
        (red_x, red_y, _), (blue_x, blue_y, _) = (_mask_centre(image, COLOURS["red"]),
                                                  _mask_centre(image, COLOURS["blue"]))
        yellow_x, yellow_y, _ = _mask_centre(image, COLOURS["yellow"])
        white_x, white_y, _ = _mask_centre(image, COLOURS["white"])
        assert red_x < 32 < blue_x and yellow_x < 32 < white_x
        assert (red_y < 32) == (blue_y < 32) != (yellow_y < 32) == (white_y < 32)
        rows.add(red_y < 32)
    assert rows == {True, False}  # the named pair is not always on top


def test_extra_objects_option_is_validated() -> None:
    with pytest.raises(ValueError, match="extra_objects"):
        ScenesConfig(extra_objects=3)
    with pytest.raises(ValueError, match="differ"):
        SceneSpec((RED_CIRCLE, BLUE_SQUARE), "above", (RED_CIRCLE,))


# --- more pictures of each training scene -----------------------------------------------

def test_train_views_add_pictures_of_the_same_scenes_and_keep_the_first_ones() -> None:
    views = replace(EXTRAS, n_train=300, train_views=3)
    plan, single = plan_splits(views), plan_splits(replace(views, train_views=1))
    assert len(plan["train"]) == 900
    assert plan["train"][:300] == single["train"]  # the first views are unchanged
    for split in ("val", "test", "zeroshot"):  # and no other split moves
        assert plan[split] == single[split]
    heldout = set(views.heldout_pairs)
    new_extras = 0
    for index, (spec, group) in enumerate(plan["train"]):
        first, first_group = plan["train"][index % 300]
        assert (spec.key, group) == (first.key, first_group)  # same captions, same group
        assert len(set(spec.objects + spec.extras)) == 4
        assert not spec.shape_colour_pairs(with_extras=True) & heldout
        new_extras += index >= 300 and spec.extras != first.extras
    assert new_extras > 0.9 * 600  # (a redraw may repeat the extras by chance)
    with pytest.raises(ValueError, match="train_views"):
        ScenesConfig(train_views=0)


def test_views_are_different_pictures_with_the_captions_of_their_scene(tmp_path) -> None:
    make_scenes(tmp_path, replace(TINY, train_views=2))
    lines = (tmp_path / "train.en.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) == 20
    for first, view in zip(rows[:10], rows[10:], strict=True):
        assert first["scene"] == view["scene"]  # (TINY has no extras)
        assert (tmp_path / first["image"]).read_bytes() != (tmp_path / view["image"]).read_bytes()
    pictures = {row["image"] for row in rows}
    assert len(pictures) == 20
    assert json.loads((tmp_path / "scenes.json").read_text())["splits"]["train"] == 20


# --- captions a picture makes true ------------------------------------------------------

@pytest.mark.parametrize("relation", ["left of", "above"])
def test_true_captions_are_the_pairs_the_picture_shows(relation: str) -> None:
    yellow, white = ObjectSpec("circle", "yellow", "small"), ObjectSpec("cross", "white", "small")
    objects = {"red": RED_CIRCLE, "blue": BLUE_SQUARE, "yellow": yellow, "white": white}
    for seed in range(4):  # the render draws the lane; draw_scene reports it
        image, drawn = draw_scene(SceneSpec((RED_CIRCLE, BLUE_SQUARE), relation,
                                            (yellow, white)), 64, np.random.default_rng(seed),
                                  background_noise=0)
        centre = {objects[name]: _mask_centre(np.asarray(image), COLOURS[name])[:2]
                  for name in objects}
        shown = set()
        for one, (x, y) in centre.items():  # every ordered pair, read off the pixels
            for other, (other_x, other_y) in centre.items():
                if abs(y - other_y) < 16 and x < other_x:
                    shown.add(((one, other), "left of"))
                if abs(x - other_x) < 16 and y < other_y:
                    shown.add(((one, other), "above"))
        assert drawn.lane is not None and drawn.true_captions() == shown
        assert len(shown) == 4 and drawn.key in shown


def test_scene_files_list_the_other_pictures_each_caption_is_true_of(tmp_path: Path) -> None:
    make_scenes(tmp_path / "x", replace(EXTRAS, n_train=200, n_val=10, n_test=200,
                                        n_zeroshot=10, image_size=16, languages=("en", "fr")))
    rows = [json.loads(line) for line in (tmp_path / "x" / "train.fr.jsonl").open()]
    specs = [SceneSpec.from_dict(row["scene"]) for row in rows]
    listed = 0
    for row, spec in zip(rows, specs, strict=True):
        expected = [other["image_id"] for other, other_spec in zip(rows, specs, strict=True)
                    if other is not row and spec.key in other_spec.true_captions()]
        assert row.get("also_true", []) == expected
        listed += bool(expected)
    assert listed > 10  # with two extras, captions do hold for other pictures
    records = read_captions_jsonl(tmp_path / "x" / "train.fr.jsonl")
    assert [list(r.also_true) for r in records] == [row.get("also_true", []) for row in rows]
    make_scenes(tmp_path / "plain", TINY)  # without extras a caption holds once: no new keys
    for line in (tmp_path / "plain" / "test.en.jsonl").open():
        assert "also_true" not in line and "lane" not in line

"""Synthetic compositional scenes: two named shapes, one relation, captions in en/de/fr.

No benchmark can be downloaded here, and the thing twinrank is built for, a reranker that
gets attribute binding and word order right where a bi-encoder does not, needs data where
"a small red circle left of a large blue square" and "a small blue circle left of a large red
square" are different pictures. So the val/test/zeroshot splits hold such look-alikes side by
side, and the zeroshot split holds (shape, colour) pairs that training never shows.

With ``extra_objects`` (1 or 2), every scene also holds shapes its captions never name, in
the other row (or column), as real photos hold far more than their captions say. A
bi-encoder must then pack every object, its attributes and its place into one vector
before it knows the query; a cross-encoder reads the image with the query in hand. Their
look-alikes include the named objects trading places or colours with an unnamed one.

Everything is a pure function of the seed: the same config writes byte-identical files.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "cross")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 175, 60), "blue": (50, 90, 235), "yellow": (235, 215, 40),
    "purple": (150, 60, 200), "orange": (245, 140, 30), "white": (240, 240, 240),
}
SIZES = ("small", "large")
RELATIONS = ("left of", "above")
LANGUAGES = ("en", "de", "fr")
SPLITS = ("train", "val", "test", "zeroshot")
DEFAULT_HELDOUT_PAIRS = (("circle", "green"), ("square", "yellow"), ("triangle", "purple"),
                         ("star", "red"), ("cross", "blue"))

# Templates take noun phrases: {a_*} is the left/top object, {b_*} the right/bottom one.
_TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "en": {
        "left of": ("{a_nom} left of {b_nom}", "{b_nom} to the right of {a_nom}",
                    "there is {a_nom} on the left and {b_nom} on the right",
                    "{a_nom} with {b_nom} to its right"),
        "above": ("{a_nom} above {b_nom}", "{b_nom} below {a_nom}",
                  "there is {a_nom} at the top and {b_nom} at the bottom",
                  "{a_nom} with {b_nom} below it"),
    },
    "de": {
        "left of": ("{a_nom} links von {b_dat}", "{b_nom} rechts von {a_dat}",
                    "links {a_nom}, rechts {b_nom}", "{a_nom} und rechts daneben {b_nom}"),
        "above": ("{a_nom} über {b_dat}", "{b_nom} unter {a_dat}",
                  "oben {a_nom}, unten {b_nom}", "{a_nom} und darunter {b_nom}"),
    },
    "fr": {
        "left of": ("{a_nom} à gauche {b_de}", "{b_nom} à droite {a_de}",
                    "il y a {a_nom} à gauche et {b_nom} à droite",
                    "{a_nom} avec {b_nom} à sa droite"),
        "above": ("{a_nom} au-dessus {b_de}", "{b_nom} en dessous {a_de}",
                  "il y a {a_nom} en haut et {b_nom} en bas", "{a_nom} avec {b_nom} en dessous"),
    },
}
MAX_CAPTIONS = 4
_DE_NOUNS = {"circle": ("Kreis", "m"), "square": ("Quadrat", "n"), "triangle": ("Dreieck", "n"),
             "star": ("Stern", "m"), "cross": ("Kreuz", "n")}
_DE_ADJECTIVES = {
    "small": "klein", "large": "groß", "red": "rot", "green": "grün", "blue": "blau",
    "yellow": "gelb", "purple": "violett", "orange": "orangefarben", "white": "weiß",
}
_FR_NOUNS = {"circle": ("cercle", "m"), "square": ("carré", "m"), "triangle": ("triangle", "m"),
             "star": ("étoile", "f"), "cross": ("croix", "f")}
_FR_ADJECTIVES = {  # (masculine, feminine)
    "small": ("petit", "petite"), "large": ("grand", "grande"), "red": ("rouge", "rouge"),
    "green": ("vert", "verte"), "blue": ("bleu", "bleue"), "yellow": ("jaune", "jaune"),
    "purple": ("violet", "violette"), "orange": ("orange", "orange"),
    "white": ("blanc", "blanche"),
}
_RADIUS = {"small": 0.11, "large": 0.2}  # fraction of the image side
_SUPERSAMPLE = 2  # shapes are drawn at 2x and box-filtered down for smooth edges


@dataclass(frozen=True, order=True)
class ObjectSpec:
    """One shape in a scene, e.g. ``ObjectSpec("circle", "red", "small")``."""

    shape: str
    colour: str
    size: str

    def __post_init__(self) -> None:
        for value, allowed in ((self.shape, SHAPES), (self.colour, tuple(COLOURS)),
                               (self.size, SIZES)):
            if value not in allowed:
                raise ValueError(f"unknown object attribute {value!r}; expected one of {allowed}")


@dataclass(frozen=True, order=True)
class SceneSpec:
    """Two different named objects; ``objects[0]`` is the left (or top) one.

    ``extras`` are objects the captions do not name, drawn in the other row (for "left
    of") or column (for "above"); they differ from the named two and from each other.
    ``lane`` puts the named pair in the top row (left column) with 0, the other with 1;
    ``None`` leaves it to the render's random draw.
    """

    objects: tuple[ObjectSpec, ObjectSpec]
    relation: str = "left of"
    extras: tuple[ObjectSpec, ...] = ()
    lane: int | None = None

    def __post_init__(self) -> None:
        if self.relation not in RELATIONS:
            raise ValueError(f"unknown relation {self.relation!r}; expected one of {RELATIONS}")
        if self.objects[0] == self.objects[1]:
            raise ValueError(f"a scene needs two different objects, got {self.objects[0]} twice")
        if len(self.extras) > 2:
            raise ValueError(f"a scene holds at most 2 extra objects, got {len(self.extras)}")
        if len(set(self.objects + self.extras)) != 2 + len(self.extras):
            raise ValueError("a scene's extra objects must differ from its named ones and "
                             "from each other")
        if self.lane not in (None, 0, 1):
            raise ValueError(f"lane must be 0, 1 or None, got {self.lane!r}")

    @property
    def key(self) -> tuple[tuple[ObjectSpec, ObjectSpec], str]:
        """What the captions say (named objects and relation): unique within a dataset."""
        return self.objects, self.relation

    def swap_positions(self) -> SceneSpec:
        first, second = self.objects
        return replace(self, objects=(second, first))

    def swap_colours(self) -> SceneSpec:
        first, second = self.objects
        return replace(self, objects=(ObjectSpec(first.shape, second.colour, first.size),
                                      ObjectSpec(second.shape, first.colour, second.size)))

    def swap_sizes(self) -> SceneSpec:
        first, second = self.objects
        return replace(self, objects=(ObjectSpec(first.shape, first.colour, second.size),
                                      ObjectSpec(second.shape, second.colour, first.size)))

    def swap_with_extra(self, slot: int) -> SceneSpec:
        """Named object ``slot`` trades places with the first extra (so it leaves the row)."""
        named, extras = list(self.objects), list(self.extras)
        named[slot], extras[0] = extras[0], named[slot]
        return replace(self, objects=(named[0], named[1]), extras=tuple(extras))

    def swap_colour_with_extra(self, slot: int) -> SceneSpec:
        """Named object ``slot`` and the first extra trade colours."""
        named, extras = list(self.objects), list(self.extras)
        one, other = named[slot], extras[0]
        named[slot] = ObjectSpec(one.shape, other.colour, one.size)
        extras[0] = ObjectSpec(other.shape, one.colour, other.size)
        return replace(self, objects=(named[0], named[1]), extras=tuple(extras))

    def distractors(self) -> list[SceneSpec]:
        """Look-alikes with the same bag of objects: only binding or places tell them apart."""
        swaps: list[Callable[[], SceneSpec]] = [
            self.swap_colours, self.swap_positions, self.swap_sizes]
        if self.extras:
            swaps += [lambda: self.swap_with_extra(0), lambda: self.swap_colour_with_extra(1)]
        unique: list[SceneSpec] = []
        for swap in swaps:
            try:
                spec = swap()
            except ValueError:  # the swap made two objects equal: not a valid scene
                continue
            if spec.key != self.key and spec.key not in {u.key for u in unique}:
                unique.append(spec)
        return unique

    def cells(self) -> dict[ObjectSpec, tuple[int, int]] | None:
        """(column, row) of every object on the 2 x 2 grid a scene with two extras is drawn
        on; ``None`` before the lane is fixed, and with fewer extras (one extra's column is
        drawn with the picture)."""
        if len(self.extras) != 2 or self.lane is None:
            return None
        lane = self.lane
        placed = [(obj, slot, lane) for slot, obj in enumerate(self.objects)]
        placed += [(obj, slot, 1 - lane) for slot, obj in enumerate(self.extras)]
        return {obj: (slot, row) if self.relation == "left of" else (row, slot)
                for obj, slot, row in placed}

    def true_captions(self) -> set[tuple[tuple[ObjectSpec, ObjectSpec], str]]:
        """Every caption key this picture makes true: any two objects in one row, the left
        one first ("left of"), or in one column, the top one first ("above").

        With extras on a 2 x 2 grid that is four captions, and nothing in the picture says
        which pair the captions name; a corpus where one picture makes another's caption
        true has two right answers, and Recall@1 credits only one. Without a fixed lane
        only the named pair and the extras' pair are known.

        >>> a, b, c, d = (ObjectSpec(s, "red", "small") for s in SHAPES[:4])
        >>> spec = SceneSpec((a, b), "above", (c, d), lane=0)  # a, b left; c, d right
        >>> sorted((k[0][0].shape, k[1]) for k in spec.true_captions())
        [('circle', 'above'), ('circle', 'left of'), ('square', 'left of'), ('triangle', 'above')]
        """
        grid = self.cells()
        if grid is None:
            keys = {self.key}
            if len(self.extras) == 2:
                keys.add(((self.extras[0], self.extras[1]), self.relation))
            return keys
        keys = set()
        for one, (column, row) in grid.items():
            for other, (other_column, other_row) in grid.items():
                if row == other_row and column < other_column:
                    keys.add(((one, other), "left of"))
                if column == other_column and row < other_row:
                    keys.add(((one, other), "above"))
        return keys

    def shape_colour_pairs(self, with_extras: bool = False) -> set[tuple[str, str]]:
        """The named objects' (shape, colour) pairs; the extras' too with ``with_extras``."""
        objects = self.objects + self.extras if with_extras else self.objects
        return {(obj.shape, obj.colour) for obj in objects}

    @classmethod
    def from_dict(cls, scene: dict[str, Any]) -> SceneSpec:
        """The spec a scenes file's ``"scene"`` holds (``to_dict``'s inverse)."""
        objects = [ObjectSpec(**obj) for obj in scene["objects"]]
        return cls((objects[0], objects[1]), scene["relation"],
                   tuple(ObjectSpec(**obj) for obj in scene.get("extras", [])),
                   scene.get("lane"))

    def to_dict(self) -> dict[str, Any]:
        scene: dict[str, Any] = {"relation": self.relation,
                                 "objects": [asdict(obj) for obj in self.objects]}
        if self.extras:
            scene["extras"] = [asdict(obj) for obj in self.extras]
        if self.lane is not None:
            scene["lane"] = self.lane
        return scene


def with_extras(spec: SceneSpec, count: int, rng: np.random.Generator,
                allowed: Callable[[ObjectSpec], bool] | None = None) -> SceneSpec:
    """``spec`` with ``count`` random unnamed objects (``allowed`` ones only) added.

    >>> spec = SceneSpec((ObjectSpec("circle", "red", "small"),
    ...                   ObjectSpec("square", "blue", "large")))
    >>> len(with_extras(spec, 2, np.random.default_rng(0)).extras)
    2
    """
    if count <= 0:
        return spec
    extras: list[ObjectSpec] = []
    while len(extras) < count:
        obj = ObjectSpec(SHAPES[int(rng.integers(len(SHAPES)))],
                         tuple(COLOURS)[int(rng.integers(len(COLOURS)))],
                         SIZES[int(rng.integers(len(SIZES)))])
        if obj not in spec.objects and obj not in extras and (allowed is None or allowed(obj)):
            extras.append(obj)
    return SceneSpec(spec.objects, spec.relation, tuple(extras))


@dataclass(frozen=True)
class ScenesConfig:
    """How many scenes per split and how they look; ``seed`` fixes every byte written."""

    n_train: int = 2000
    n_val: int = 200
    n_test: int = 500
    n_zeroshot: int = 500
    image_size: int = 64
    languages: tuple[str, ...] = LANGUAGES
    captions_per_image: int = 3
    seed: int = 0
    heldout_pairs: tuple[tuple[str, str], ...] = DEFAULT_HELDOUT_PAIRS
    background_noise: float = 4.0
    extra_objects: int = 0  # unnamed shapes per scene (0, 1 or 2), in the other row/column
    train_views: int = 1  # pictures per training scene: new extras, places, tints and noise

    def __post_init__(self) -> None:
        if min(self.split_sizes().values()) < 0 or self.seed < 0:
            raise ValueError("split sizes and seed must be >= 0")
        if self.train_views < 1:
            raise ValueError(f"train_views must be at least 1, got {self.train_views}")
        if not 0 <= self.extra_objects <= 2:
            raise ValueError(f"extra_objects must be 0, 1 or 2, got {self.extra_objects}")
        if self.image_size < 16:
            raise ValueError(f"image_size must be at least 16, got {self.image_size}")
        unknown = [lang for lang in self.languages if lang not in LANGUAGES]
        if unknown or not self.languages:
            raise ValueError(f"languages must be a non-empty subset of {LANGUAGES}, got "
                             f"{self.languages}")
        if not 1 <= self.captions_per_image <= MAX_CAPTIONS:
            raise ValueError(f"captions_per_image must be 1..{MAX_CAPTIONS}")
        for shape, colour in self.heldout_pairs:
            ObjectSpec(shape, colour, SIZES[0])
        for shape in SHAPES:
            if len({c for s, c in self.heldout_pairs if s == shape}) == len(COLOURS):
                raise ValueError(f"heldout_pairs hold out every colour of {shape!r}")

    def split_sizes(self) -> dict[str, int]:
        return {"train": self.n_train, "val": self.n_val, "test": self.n_test,
                "zeroshot": self.n_zeroshot}


def _noun_phrases(obj: ObjectSpec, language: str) -> dict[str, str]:
    if language == "en":
        return {"nom": f"a {obj.size} {obj.colour} {obj.shape}"}
    if language == "de":
        noun, gender = _DE_NOUNS[obj.shape]
        size, colour = _DE_ADJECTIVES[obj.size], _DE_ADJECTIVES[obj.colour]
        ending = "er" if gender == "m" else "es"
        return {"nom": f"ein {size}{ending} {colour}{ending} {noun}",
                "dat": f"einem {size}en {colour}en {noun}"}
    noun, gender = _FR_NOUNS[obj.shape]
    form = 0 if gender == "m" else 1
    article = "un" if gender == "m" else "une"
    phrase = f"{_FR_ADJECTIVES[obj.size][form]} {noun} {_FR_ADJECTIVES[obj.colour][form]}"
    return {"nom": f"{article} {phrase}", "de": f"d'{article} {phrase}"}


def captions_for(spec: SceneSpec, language: str = "en",
                 rng: np.random.Generator | None = None) -> list[str]:
    """All paraphrases of a scene in one language, shuffled when ``rng`` is given.

    Every paraphrase names both objects with their own attributes, so a caption fits
    exactly one scene: swapping colours or positions changes the words' binding.

    >>> spec = SceneSpec((ObjectSpec("circle", "red", "small"),
    ...                   ObjectSpec("square", "blue", "large")))
    >>> captions_for(spec, "de")[0]
    'ein kleiner roter Kreis links von einem großen blauen Quadrat'
    """
    if language not in _TEMPLATES:
        raise ValueError(f"unknown language {language!r}; expected one of {LANGUAGES}")
    words: dict[str, str] = {}
    for prefix, obj in zip(("a", "b"), spec.objects, strict=True):
        words.update({f"{prefix}_{case}": text
                      for case, text in _noun_phrases(obj, language).items()})
    captions = [template.format(**words) for template in _TEMPLATES[language][spec.relation]]
    if rng is not None:
        captions = [captions[int(i)] for i in rng.permutation(len(captions))]
    return captions


def _polygon(cx: float, cy: float, radii: list[float]) -> list[tuple[float, float]]:
    angles = -np.pi / 2 + np.arange(len(radii)) * 2 * np.pi / len(radii)
    return [(cx + r * float(np.cos(a)), cy + r * float(np.sin(a)))
            for r, a in zip(radii, angles, strict=True)]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float,
                fill: tuple[int, int, int]) -> None:
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        half = 0.85 * r
        draw.rectangle((cx - half, cy - half, cx + half, cy + half), fill=fill)
    elif shape == "triangle":
        draw.polygon(_polygon(cx, cy + 0.2 * r, [1.1 * r] * 3), fill=fill)
    elif shape == "star":
        draw.polygon(_polygon(cx, cy + 0.1 * r, [1.1 * r, 0.45 * r] * 5), fill=fill)
    else:
        arm, width = 0.95 * r, 0.32 * r
        draw.rectangle((cx - arm, cy - width, cx + arm, cy + width), fill=fill)
        draw.rectangle((cx - width, cy - arm, cx + width, cy + arm), fill=fill)


def _place(slot: int, size: str, relation: str, side: int, rng: np.random.Generator,
           lane: int | None = None) -> tuple[float, float, float]:
    """Centre and radius for object ``slot``: its own half along the relation's axis.

    Without ``lane`` the object sits anywhere near the middle across that axis; with it,
    in that half (0: top row / left column, 1: the other), as scenes with extras need.
    """
    radius = _RADIUS[size] * side * rng.uniform(0.92, 1.08)
    margin = 0.04 * side
    slack = max(0.0, side / 4 - radius - margin)
    along = (slot + 0.5) * side / 2 + rng.uniform(-slack, slack)
    if lane is None:
        across = side / 2 + rng.uniform(-0.15, 0.15) * side
    else:
        across = (lane + 0.5) * side / 2 + rng.uniform(-slack, slack) / 2
    return (along, across, radius) if relation == "left of" else (across, along, radius)


def render_scene(spec: SceneSpec, image_size: int = 64, rng: np.random.Generator | None = None,
                 background_noise: float = 4.0) -> Image.Image:
    """Draw a scene as an RGB image; positions, tints and noise come from ``rng``.

    >>> spec = SceneSpec((ObjectSpec("star", "yellow", "large"),
    ...                   ObjectSpec("cross", "white", "small")), "above")
    >>> render_scene(spec, 32, np.random.default_rng(0)).size
    (32, 32)
    """
    return draw_scene(spec, image_size, rng, background_noise)[0]


def draw_scene(spec: SceneSpec, image_size: int = 64, rng: np.random.Generator | None = None,
               background_noise: float = 4.0) -> tuple[Image.Image, SceneSpec]:
    """``render_scene``, plus the spec with the lane the picture was drawn with (scenes
    with two extras), so every caption the picture makes true is known."""
    rng = rng if rng is not None else np.random.default_rng(0)
    side = image_size * _SUPERSAMPLE
    background = np.clip(rng.integers(25, 70) + rng.integers(-12, 13, size=3), 0, 255)
    canvas = Image.new("RGB", (side, side), tuple(int(v) for v in background))
    draw = ImageDraw.Draw(canvas)
    placed: list[tuple[ObjectSpec, int, int | None]] = [
        (obj, slot, None) for slot, obj in enumerate(spec.objects)]
    if spec.extras:  # the named pair in one row (column), the extras in the other
        lane = int(rng.integers(2))  # drawn even when fixed: later draws stay the same
        lane = lane if spec.lane is None else spec.lane
        if len(spec.extras) == 2:
            spec = replace(spec, lane=lane)
        slots = [0, 1] if len(spec.extras) == 2 else [int(rng.integers(2))]
        placed = [(obj, slot, lane) for obj, slot, _ in placed]
        placed += [(obj, slot, 1 - lane) for obj, slot in zip(spec.extras, slots, strict=True)]
    for obj, slot, row in placed:
        cx, cy, radius = _place(slot, obj.size, spec.relation, side, rng, row)
        tint = np.clip(np.array(COLOURS[obj.colour]) + rng.integers(-12, 13, size=3), 0, 255)
        _draw_shape(draw, obj.shape, cx, cy, radius, (int(tint[0]), int(tint[1]), int(tint[2])))
    image = canvas.resize((image_size, image_size), Image.Resampling.BOX)
    if background_noise <= 0:
        return image, spec
    noise = rng.normal(0.0, background_noise, size=(image_size, image_size, 3))
    pixels = np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB"), spec


def all_scene_specs() -> list[SceneSpec]:
    """Every distinct scene, in a fixed order (5 shapes x 7 colours x 2 sizes: 9,660)."""
    objects = [ObjectSpec(s, c, z) for s in SHAPES for c in COLOURS for z in SIZES]
    return [SceneSpec((a, b), relation) for relation in RELATIONS
            for a in objects for b in objects if a != b]


def draw_scene_groups(pool: list[SceneSpec], n: int, rng: np.random.Generator, used: set[Any],
                allowed: Callable[[SceneSpec], bool] | None, extras: int = 0,
                extra_ok: Callable[[ObjectSpec], bool] | None = None,
                ) -> list[tuple[SceneSpec, int]]:
    """Pick ``n`` scenes whose captions are not in ``used`` (a set of ``SceneSpec.key``);
    each gets ``extras`` unnamed objects and, with ``allowed``, is followed by its allowed
    look-alikes."""
    chosen: list[tuple[SceneSpec, int]] = []
    group = 0
    for index in rng.permutation(len(pool)):
        if len(chosen) >= n:
            break
        base = pool[int(index)]
        if base.key in used:
            continue
        base = with_extras(base, extras, rng, extra_ok)
        members = [base] + ([d for d in base.distractors() if allowed(d)] if allowed else [])
        for spec in members:
            if len(chosen) < n and spec.key not in used:
                used.add(spec.key)
                chosen.append((spec, group))
        group += 1
    if len(chosen) < n:
        raise ValueError(f"asked for {n} scenes but only {len(chosen)} distinct ones are left; "
                         "lower the split sizes")
    return chosen


def plan_splits(config: ScenesConfig) -> dict[str, list[tuple[SceneSpec, int]]]:
    """Scenes and distractor-group ids per split, disjoint across splits.

    Held-out (shape, colour) pairs appear only in ``zeroshot`` (never even as an unnamed
    extra elsewhere); ``val``, ``test`` and ``zeroshot`` come in groups of look-alikes
    (colour, position and size swaps, and swaps with an extra).

    >>> plan = plan_splits(ScenesConfig(n_train=4, n_val=2, n_test=3, n_zeroshot=3))
    >>> [len(plan[split]) for split in SPLITS]
    [4, 2, 3, 3]
    """
    heldout = HeldOut(frozenset(config.heldout_pairs))
    sizes = config.split_sizes()
    used: set[Any] = set()

    def draw(split: str, pool: list[SceneSpec],
             allowed: Callable[[SceneSpec], bool] | None) -> list[tuple[SceneSpec, int]]:
        rng = np.random.default_rng([config.seed, SPLITS.index(split)])
        return draw_scene_groups(pool, sizes[split], rng, used, allowed, config.extra_objects,
                                 heldout.extra_ok)

    seen = [spec for spec in all_scene_specs() if heldout.seen(spec)]
    unseen = [spec for spec in all_scene_specs() if heldout.unseen(spec)]
    plan = {split: draw(split, seen, heldout.seen) for split in ("test", "val")}
    plan["zeroshot"] = draw("zeroshot", unseen, heldout.unseen)
    plan["train"] = draw("train", seen, None)
    plan["train"] += more_views(plan["train"], config.train_views - 1, config, heldout)
    return {split: plan[split] for split in SPLITS}


def more_views(items: list[tuple[SceneSpec, int]], count: int, config: ScenesConfig,
               heldout: HeldOut) -> list[tuple[SceneSpec, int]]:
    """``count`` more pictures of every scene in ``items``, after all of them, so the first
    views stay byte-identical to a plan without more views.

    A view keeps what the captions say and its group; with extras it gets new unnamed
    objects, and every view gets its own places, tints and noise when it is drawn.
    """
    rng = np.random.default_rng([config.seed, len(SPLITS), 1])
    return [(with_extras(SceneSpec(spec.objects, spec.relation), config.extra_objects, rng,
                         heldout.extra_ok), group)
            for _ in range(count) for spec, group in items]


@dataclass(frozen=True)
class HeldOut:
    """Which scenes a split may hold, given the (shape, colour) pairs kept for zero-shot."""

    pairs: frozenset[tuple[str, str]]

    def seen(self, spec: SceneSpec) -> bool:
        """No held-out pair anywhere in the picture, named or not."""
        return not spec.shape_colour_pairs(with_extras=True) & self.pairs

    def unseen(self, spec: SceneSpec) -> bool:
        """A zero-shot scene: the captions name a held-out pair."""
        return bool(spec.shape_colour_pairs() & self.pairs)

    def extra_ok(self, obj: ObjectSpec) -> bool:
        """Unnamed extras never show a held-out pair."""
        return (obj.shape, obj.colour) not in self.pairs


def _prepare_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "scenes.json").exists():
        raise ValueError(f"{out_dir} is not empty and holds no scenes.json; "
                         "pick an empty folder or a previous scenes folder")
    for split in SPLITS:
        shutil.rmtree(out_dir / "images" / split, ignore_errors=True)
        for old in out_dir.glob(f"{split}.*jsonl"):
            old.unlink()
        (out_dir / "images" / split).mkdir(parents=True)


def also_true_ids(specs: list[SceneSpec], split: str) -> list[list[str]]:
    """For each picture, the image ids (``split/000123``) of the other pictures its caption
    is true of; views of one scene list each other.

    >>> a, b, c, d = (ObjectSpec(s, "red", "small") for s in SHAPES[:4])
    >>> also_true_ids([SceneSpec((a, b)), SceneSpec((c, d), extras=(a, b), lane=0)], "test")
    [['test/000001'], []]
    """
    makers: dict[Any, list[int]] = {}
    for index, spec in enumerate(specs):
        for key in spec.true_captions():
            makers.setdefault(key, []).append(index)
    return [[f"{split}/{other:06d}" for other in makers[spec.key] if other != index]
            for index, spec in enumerate(specs)]


def _write_split(out_dir: Path, split: str, items: list[tuple[SceneSpec, int]],
                 config: ScenesConfig) -> None:
    lines: dict[str, list[str]] = {language: [] for language in config.languages}
    rows: list[dict[str, Any]] = []
    drawn: list[SceneSpec] = []
    for index, (spec, group) in enumerate(items):
        rng = np.random.default_rng([config.seed, SPLITS.index(split), index])
        relative = f"images/{split}/{index:06d}.png"
        image, spec = draw_scene(spec, config.image_size, rng, config.background_noise)
        image.save(out_dir / relative, format="PNG")
        drawn.append(spec)
        for language in config.languages:
            rows.append({"image": relative, "language": language,
                         "captions": captions_for(spec, language, rng)[
                             : config.captions_per_image],
                         "image_id": f"{split}/{index:06d}", "group": group,
                         "scene": spec.to_dict()})
    others = also_true_ids(drawn, split)
    for row in rows:
        index = int(row["image_id"].rsplit("/", 1)[1])
        if others[index]:  # only scenes with extras make other captions true
            row["also_true"] = others[index]
        lines[row["language"]].append(json.dumps(row, ensure_ascii=False) + "\n")
    for language, texts in lines.items():
        (out_dir / f"{split}.{language}.jsonl").write_text("".join(texts), encoding="utf-8")
    default = "en" if "en" in lines else config.languages[0]
    (out_dir / f"{split}.jsonl").write_text("".join(lines[default]), encoding="utf-8")


def make_scenes(out_dir: Path, config: ScenesConfig | None = None,
                progress: bool = False) -> dict[str, Any]:
    """Write every split's images and caption files under ``out_dir``; return the summary.

    Layout: ``images/<split>/<index>.png``, ``<split>.<lang>.jsonl`` per language,
    ``<split>.jsonl`` (English, or the first language without English) and ``scenes.json``.

    >>> summary = make_scenes(Path("data/scenes"), ScenesConfig(n_train=100))  # doctest: +SKIP
    >>> summary["splits"]["train"]  # doctest: +SKIP
    100
    """
    config = config if config is not None else ScenesConfig()
    out_dir = Path(out_dir)
    _prepare_out_dir(out_dir)
    plan = plan_splits(config)
    for split, items in plan.items():
        _write_split(out_dir, split, items, config)
        if progress:
            print(f"scenes: wrote {len(items)} {split} images to {out_dir}", file=sys.stderr)
    summary: dict[str, Any] = {
        "format": "twinrank-scenes/1",
        "config": asdict(config),
        "heldout_pairs": [list(pair) for pair in config.heldout_pairs],
        "splits": {split: len(items) for split, items in plan.items()},
        "languages": list(config.languages),
        "shapes": list(SHAPES), "colours": list(COLOURS), "sizes": list(SIZES),
        "relations": list(RELATIONS),
    }
    text = json.dumps(summary, indent=2, ensure_ascii=False) + "\n"
    (out_dir / "scenes.json").write_text(text, encoding="utf-8")
    return dict(json.loads(text))

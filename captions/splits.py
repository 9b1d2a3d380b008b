"""Grouped, deterministic splits: near-duplicates always land on the same side.

A held-out split measures generalisation only when no picture in it has a twin on the
other side: the same drawing filed under two folders, a colour variant, the next frame of
a series. Items are linked by any key they share (the same image file, the same title
stem, the same look-alike key); each connected group is named by its smallest key and
goes to the split that the hash of that name picks. The choice depends on the group's
name alone, never on file order or on the other items, so a rebuild, a new package
version or a changed fraction moves as few groups as possible.

>>> groups = connected_groups([{"a"}, {"a", "b"}, {"b"}, {"d"}])
>>> groups
['a', 'a', 'a', 'd']
>>> [split_of(g, {"test": 0.5}) for g in ("a", "d")]
['test', 'train']
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

TRAIN = "train"


def stable_unit(key: str, salt: str = "") -> float:
    """A number in [0, 1) fixed by ``key`` (and ``salt``): the same on every machine.

    Python's ``hash`` of a string changes between processes, so it cannot place a group.

    >>> stable_unit("cat") == stable_unit("cat") and 0.0 <= stable_unit("cat") < 1.0
    True
    """
    digest = hashlib.sha256(f"{salt}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(group: str, fractions: Mapping[str, float], salt: str = "") -> str:
    """The split a group belongs to: ``fractions`` names the held-out splits (in order),
    the rest of the unit interval is ``"train"``.

    >>> split_of("cat", {"validation": 0.0, "test": 0.0})
    'train'
    """
    check_fractions(fractions)
    unit, start = stable_unit(group, salt), 0.0
    for name, fraction in fractions.items():
        start += fraction
        if unit < start:
            return name
    return TRAIN


def check_fractions(fractions: Mapping[str, float]) -> None:
    """Refuse negative held-out fractions, or ones that leave nothing to train on."""
    for name, fraction in fractions.items():
        if not fraction >= 0.0:
            raise ValueError(f"the {name} fraction must be a number >= 0, got {fraction}")
    if sum(fractions.values()) >= 1.0:
        raise ValueError(f"the held-out fractions {dict(fractions)} leave nothing to train on; "
                         "their sum must be below 1")


def connected_groups(keys: Sequence[Iterable[str]]) -> list[str]:
    """For each item, the name of its group: items sharing any key are in one group
    (transitively), named by the smallest key in it; an item without keys is its own
    group, named by its position.

    >>> connected_groups([{"x"}, set(), {"y", "x"}])
    ['x', '#1', 'x']
    """
    parent: dict[str, str] = {}

    def root(key: str) -> str:
        parent.setdefault(key, key)
        while parent[key] != key:
            parent[key] = parent[parent[key]]  # path halving
            key = parent[key]
        return key

    for item_keys in keys:
        roots = sorted({root(key) for key in item_keys})
        for other in roots[1:]:
            parent[other] = roots[0]  # the smaller key names the merged group
    return [min((root(key) for key in item_keys), default=f"#{index}")
            for index, item_keys in enumerate(keys)]


__all__ = ["TRAIN", "check_fractions", "connected_groups", "split_of", "stable_unit"]

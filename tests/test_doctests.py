"""The examples in the training and evaluation docstrings run and print what they show."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ("twinrank.captions.scenes", "twinrank.train.batches", "twinrank.train.losses",
           "twinrank.captions.data", "twinrank.evaluation.metrics", "twinrank.evaluation.scoring",
           "twinrank.evaluation.encode", "twinrank.evaluation.harness")


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted > 0

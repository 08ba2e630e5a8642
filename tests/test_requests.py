"""Resolving a request: readable refusals and the warnings a caller should see."""

from __future__ import annotations

import pytest

from pureebm.purifiers import Overrides
from pureebm.registry import Registry
from pureebm.requests import resolve_request, size_warnings


def test_a_value_out_of_range_is_refused_in_one_line_without_links(tiny_registry):
    with pytest.raises(ValueError) as refused:
        resolve_request(Overrides(steps=100_000), "tiny", Registry(tiny_registry))
    message = str(refused.value)
    assert message.startswith("steps: ") and "2000" in message
    assert "pydantic" not in message and "http" not in message and "\n" not in message


def test_images_far_larger_than_the_models_are_named_in_a_warning():
    assert size_warnings([32 * 32] * 3, "m:1", 32) == []
    assert size_warnings([128 * 128], None, 32) == []  # no model: nothing learnt at a size
    (warning,) = size_warnings([32 * 32, 128 * 128, 256 * 256], "m:1", 32)
    assert warning.startswith("2 of 3 images") and "32 px" in warning and "m:1" in warning

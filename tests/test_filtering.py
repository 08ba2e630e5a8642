"""The energy-ranked selection: which images a filter purifies."""

from __future__ import annotations

import pytest

from pureebm.filtering import (
    FilterError,
    clean_threshold,
    most_pixels_selected,
    resolve_filter,
    selected_positions,
)
from pureebm.registry import Registry


def test_a_fraction_selects_the_ceiling_of_k_n_highest_energies_in_position_order():
    energies = [0.1, 0.9, 0.5, 0.7, 0.3]
    assert selected_positions(energies, 0.4) == [1, 3]
    assert selected_positions(energies, 0.5) == [1, 2, 3]  # ceil(2.5)
    assert selected_positions(energies, 1.0) == [0, 1, 2, 3, 4]
    assert selected_positions(energies, 0.01) == [1]
    assert selected_positions([], 0.5) == []


def test_ties_go_to_the_earlier_position():
    assert selected_positions([1.0, 2.0, 2.0, 2.0], 0.5) == [1, 2]


def test_auto_selects_energies_above_the_threshold():
    assert selected_positions([0.1, 0.6, 0.5, 0.9], "auto", threshold=0.5) == [1, 3]
    with pytest.raises(FilterError):
        selected_positions([0.1], "auto")


def test_the_auto_threshold_is_the_median_of_clean_energies():
    clean = [0.4, 0.1, 0.3, 0.2, 0.5]
    assert clean_threshold(clean) == 0.3
    assert selected_positions(clean, "auto", clean_threshold(clean)) == [0, 4]


def test_a_job_runs_the_callers_filter_else_its_presets_and_k_1_is_none(tiny_registry):
    plain = Registry(tiny_registry).manifest("tiny")
    filtered = plain.model_copy(update={"filter": 0.5})
    assert resolve_filter(None, plain, plain) is None
    assert resolve_filter(None, filtered, filtered) == 0.5
    assert resolve_filter(None, None, filtered) is None  # another family: not the preset's
    assert resolve_filter(0.25, filtered, filtered) == 0.25
    assert resolve_filter(1.0, filtered, filtered) is None  # every image: no ranking pass
    with pytest.raises(FilterError, match="no calibrated energy threshold"):
        resolve_filter("auto", plain, plain)
    calibrated = plain.model_copy(update={"energy_threshold": 0.1})
    assert resolve_filter("auto", None, calibrated) == "auto"


def test_a_fraction_is_taken_within_each_image_size():
    """Large images score lower here (as smooth photographs do): ranked as one set,
    none of them would be purified; within sizes, half of each size is."""
    energies = [5.0, 6.0, 7.0, 8.0, 1.0, 2.0, 3.0, 4.0]
    pixels = [32 * 32] * 4 + [128 * 128] * 4
    assert selected_positions(energies, 0.5) == [0, 1, 2, 3]
    assert selected_positions(energies, 0.5, pixels=pixels) == [2, 3, 6, 7]
    near = [32 * 32, 32 * 33, 33 * 33, 31 * 32]  # within half an octave of area: one size
    assert selected_positions([1.0, 2.0, 3.0, 4.0], 0.5, pixels=near) == [2, 3]


def test_the_most_pixels_a_filter_can_choose_are_the_largest_of_each_size():
    pixels = [1024] * 4 + [4096, 4096 * 4]  # four small, one 64 px, one 128 px
    assert most_pixels_selected(pixels, None) == sum(pixels) == most_pixels_selected(pixels, "auto")
    assert most_pixels_selected(pixels, 0.5) == 2 * 1024 + 4096 + 16384
    assert most_pixels_selected(pixels, 0.01) == 1024 + 4096 + 16384

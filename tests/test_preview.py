"""pureebm/preview.py: the job's card, drawn from known images and scores."""

from __future__ import annotations

import numpy as np
from PIL import Image

from pureebm.preview import (
    AMPLIFY,
    CUT,
    MARGIN,
    TEXT,
    TILE,
    Sample,
    difference,
    histogram,
    job_card,
    tile,
)


def test_the_difference_is_amplified_and_clipped():
    sent = np.full((4, 4, 3), 100, np.uint8)
    purified = sent.copy()
    purified[0, 0] = 103  # moved by 3: shown as 3 x AMPLIFY
    purified[1, 1] = 0  # moved by 100: clipped to 255
    shown = difference(sent, purified)
    assert shown[0, 0].tolist() == [3 * AMPLIFY] * 3 and shown[1, 1].tolist() == [255] * 3
    assert shown[2, 2].tolist() == [0, 0, 0]


def test_a_tile_is_scaled_to_its_height_keeping_the_aspect_and_the_pixels():
    rgb = np.zeros((8, 16, 3), np.uint8)
    rgb[:, 8:] = 255
    shown = np.asarray(tile(rgb))
    assert shown.shape == (TILE, 2 * TILE, 3)
    assert shown[:, : TILE - 1].max() == 0 and shown[:, TILE + 1 :].min() == 255  # no blur


def test_the_histogram_draws_the_filters_cut_where_it_falls():
    scores = list(np.linspace(0, 10, 50))
    panel = np.asarray(histogram(scores, 5.0, 400, 200))
    red = np.all(panel == CUT, axis=2)
    columns = np.flatnonzero(red.any(axis=0))
    assert columns.size > 0 and abs(columns.mean() - 200) <= 2  # half way along the axis
    assert not np.all(np.asarray(histogram(scores, None, 400, 200)) == CUT, axis=2).any()
    assert np.asarray(histogram([None, None], None, 400, 200)).size  # no scores: a note only


def test_the_card_shows_each_sample_sent_purified_and_moved():
    rng = np.random.default_rng(0)
    samples = []
    for i in range(3):
        sent = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        purified = np.clip(sent.astype(int) + 2, 0, 255).astype(np.uint8)
        samples.append(Sample(f"{i}.png", sent, purified, 42.0))
    card = job_card(samples, [1.0, 2.0, 3.0], 2.0, "job x")
    assert isinstance(card, Image.Image) and card.mode == "RGB"
    pixels = np.asarray(card)
    first_row = pixels[3 * TEXT : 3 * TEXT + TILE]  # below the title lines
    assert np.array_equal(first_row[:, MARGIN : MARGIN + TILE], np.asarray(tile(samples[0].sent)))
    moved = first_row[:, 3 * MARGIN + 2 * TILE : 3 * MARGIN + 3 * TILE]
    assert np.all(moved <= 2 * AMPLIFY) and moved.max() == 2 * AMPLIFY  # the +2, amplified
    assert card.height > 3 * TILE
    long_title = "job " + "W" * 200  # the widest letter, in the font the card draws with
    wide = np.asarray(job_card(samples, [1.0], None, long_title))
    inked = np.flatnonzero((wide[: MARGIN // 2 + TEXT] < 255).any(axis=(0, 2)))
    assert inked.max() < wide.shape[1] - MARGIN // 2  # the title's ink ends inside the card

"""The quality card's measures against closed forms, and the calibration's choice."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pureebm.langevin import to_unit_range
from pureebm.purifiers.langevin import LangevinSpec
from pureebm.quality import (
    budgeted,
    calibrate,
    calibration_cost,
    calibration_settings,
    card,
    langevin_purifier,
    perturb,
    psnr,
    residual,
    sign_pattern,
    smooth_pattern,
    standard_perturbations,
)


class PullToImage(nn.Module):
    """E(x) = |x - c|^2 / 2: its gradient flow shrinks any x - c by (1 - a) per step,
    a = eps^2 / (2 tau)."""

    def __init__(self, centre: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("centre", centre)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (x - self.centre).pow(2).flatten(1).sum(1)


def test_residual_is_one_for_the_identity_and_zero_for_a_constant_purifier(cifar):
    clean = torch.from_numpy(cifar["images"][:8]).permute(0, 3, 1, 2)
    d = sign_pattern(clean.shape[1:], 4, 8 / 255, 0)
    perturbed = perturb(clean, d)
    actual = perturbed.float() - clean.float()
    assert residual(clean, perturbed, actual) == pytest.approx(torch.ones(8))
    constant = torch.full_like(clean, 128)
    assert residual(constant, constant, actual) == pytest.approx(torch.zeros(8))


def test_patterns_have_their_amplitude_grain_and_smoothness():
    blocks = sign_pattern((3, 32, 32), 4, 8 / 255, 0)
    assert set(blocks.unique().tolist()) == {-8.0, 8.0}
    assert torch.equal(blocks[:, ::4, ::4].repeat_interleave(4, 1).repeat_interleave(4, 2), blocks)
    smooth = smooth_pattern((3, 32, 32), 8 / 255, 0)
    assert smooth.abs().max() == 8
    assert (smooth[:, 1:] - smooth[:, :-1]).abs().max() <= 4  # at most 2 cycles per image
    assert set(standard_perturbations((3, 32, 32))) >= {"4x4 blocks 8/255", "sign 16/255"}


def test_the_card_measures_the_closed_form_decay_of_a_quadratic_energy(cifar):
    """Every image pulled toward the same centre c with E = |x - c|^2 / 2: the
    chain is linear, so Psi_T(x + d) - Psi_T(x) = (1 - a)^T d before rounding."""
    clean = torch.from_numpy(cifar["images"][:16]).permute(0, 3, 1, 2)
    centre = to_unit_range(clean).mean(0, keepdim=True)
    eps, tau = 0.01, 5e-4  # a = 0.1
    params = LangevinSpec(steps=10, eps=eps, tau=tau)
    purifier = langevin_purifier(PullToImage(centre), params, [0, 5, 10], "cpu")
    rows = card(purifier, clean, {"d": sign_pattern(clean.shape[1:], 2, 16 / 255, 3)})
    for t in (5, 10):
        assert rows[str(t)]["r d"][0] == pytest.approx(0.9**t, abs=0.03)
    assert rows["0"]["r d"][0] == pytest.approx(1.0)
    assert rows["0"]["psnr_db"][0] > rows["5"]["psnr_db"][0] > rows["10"]["psnr_db"][0]


def test_calibration_removes_most_above_the_floor_and_lowers_an_unreachable_floor(cifar):
    clean = torch.from_numpy(cifar["images"][:8]).permute(0, 3, 1, 2)
    net = PullToImage(to_unit_range(clean).mean(0, keepdim=True))
    grid = dict(settings=[(0.005, 5e-4), (0.01, 5e-4)], steps=[2, 5, 10], device="cpu")
    chosen = calibrate(net, clean, psnr_floor=25.0, **grid)
    above = [row for row in chosen.table if row["psnr_db"] >= 25.0]
    assert chosen.psnr_db >= 25.0
    assert chosen.residual == min(row["residual"] for row in above)
    assert chosen.residual < 0.9  # the strongest admissible setting, not the weakest
    unreachable = calibrate(net, clean, psnr_floor=200.0, **grid)
    assert unreachable.psnr_db == max(row["psnr_db"] for row in unreachable.table)
    assert psnr(clean, clean).min() >= 100


def test_calibration_settings_vary_the_drift_and_the_noise_apart():
    """delta = eps^2 / (2 tau) spans 1/16 to 64 times the given drift, and each
    drift comes at temperatures tau, tau/16 and tau/256 (noise eps, eps/4, eps/16)."""
    settings = calibration_settings(0.02, 0.0625)
    drifts = sorted({round(e * e / (2 * t) / 0.0032, 3) for e, t in settings})
    assert drifts == [0.062, 0.25, 1.0, 4.0, 16.0, 64.0]
    at_given_drift = sorted(e for e, t in settings if round(e * e / (2 * t), 6) == 0.0032)
    assert at_given_drift == pytest.approx([0.00125, 0.005, 0.02])
    assert all(e <= 0.1 for e, _ in settings)  # the one over LangevinSpec' bound is left out
    assert len(settings) == 17
    first = {round(e * e / (2 * t) / 0.0032, 3) for e, t in settings[:3]}
    assert first == {1.0}  # the given drift first: a budgeted calibration keeps it


def test_a_budgeted_calibration_fits_its_budget_shrinking_settings_images_then_sweep():
    settings = calibration_settings(0.02, 0.0625)
    steps = (1, 2, 3, 5, 10, 40)
    full = calibration_cost(len(settings), steps, 32)
    assert budgeted(settings, steps, 32, full) == (settings, steps, 32)
    kept, sweep, images = budgeted(settings, steps, 32, full // 4)
    assert (sweep, images) == (steps, 32) and len(kept) == len(settings) // 4
    assert kept == settings[: len(kept)]
    kept, sweep, images = budgeted(settings, steps, 32, calibration_cost(1, steps, 8))
    assert (len(kept), sweep, images) == (1, steps, 8)
    kept, sweep, images = budgeted(settings, steps, 32, calibration_cost(1, (1, 2, 3), 4))
    assert (len(kept), sweep, images) == (1, (1, 2, 3), 4)
    assert budgeted(settings, steps, 32, 0) == (settings[:1], (1,), 4)  # the floor
    for budget in (10**3, 10**4, 10**5, full):
        kept, sweep, images = budgeted(settings, steps, 32, budget)
        assert calibration_cost(len(kept), sweep, images) <= budget


def test_lower_temperature_keeps_more_content_and_removes_the_same(cifar):
    """On a quadratic energy at one drift per step, r is the same closed form
    (1 - a)^T at every temperature, and PSNR rises as the noise falls."""
    clean = torch.from_numpy(cifar["images"][:8]).permute(0, 3, 1, 2)
    net = PullToImage(to_unit_range(clean).mean(0, keepdim=True))
    d = {"d": sign_pattern(clean.shape[1:], 4, 16 / 255, 3)}
    rows = {}
    for eps, tau in ((0.01, 5e-4), (0.0025, 5e-4 / 16)):  # a = 0.1 both
        purifier = langevin_purifier(net, LangevinSpec(steps=3, eps=eps, tau=tau), [3], "cpu")
        rows[eps] = card(purifier, clean, d)["3"]
    for row in rows.values():
        assert row["r d"][0] == pytest.approx(0.9**3, abs=0.03)
    assert rows[0.0025]["psnr_db"][0] > rows[0.01]["psnr_db"][0]

"""The quality card's measures against closed forms, and the calibration's choice."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pureebm.langevin import to_unit_range
from pureebm.params import LangevinParams
from pureebm.quality import (
    calibrate,
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
    params = LangevinParams(steps=10, eps=eps, tau=tau)
    purifier = langevin_purifier(PullToImage(centre), params, [0, 5, 10], "cpu")
    rows = card(purifier, clean, {"d": sign_pattern(clean.shape[1:], 2, 16 / 255, 3)})
    for t in (5, 10):
        assert rows[str(t)]["r d"][0] == pytest.approx(0.9**t, abs=0.03)
    assert rows["0"]["r d"][0] == pytest.approx(1.0)
    assert rows["0"]["psnr_db"][0] > rows["5"]["psnr_db"][0] > rows["10"]["psnr_db"][0]


def test_calibration_removes_most_above_the_floor_and_lowers_an_unreachable_floor(cifar):
    clean = torch.from_numpy(cifar["images"][:8]).permute(0, 3, 1, 2)
    net = PullToImage(to_unit_range(clean).mean(0, keepdim=True))
    grid = dict(eps_grid=[0.005, 0.01], tau_grid=[5e-4], steps=[2, 5, 10], device="cpu")
    chosen = calibrate(net, clean, psnr_floor=25.0, **grid)
    above = [row for row in chosen.table if row["psnr_db"] >= 25.0]
    assert chosen.psnr_db >= 25.0
    assert chosen.residual == min(row["residual"] for row in above)
    assert chosen.residual < 0.9  # the strongest admissible setting, not the weakest
    unreachable = calibrate(net, clean, psnr_floor=200.0, **grid)
    assert unreachable.psnr_db == max(row["psnr_db"] for row in unreachable.table)
    assert psnr(clean, clean).min() >= 100

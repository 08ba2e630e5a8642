"""Cancellation points: a check installed around a chain stops it mid-way, and sees
how far the chain is."""

from __future__ import annotations

import pytest
import torch

from pureebm import interrupts
from pureebm.diffusion import ddpm_chain
from pureebm.langevin import langevin_chain


class Stop(Exception):
    pass


def stop_after(counter: list[int], limit: int):
    def check(images_done: float) -> None:
        if counter[0] >= limit:
            raise Stop

    return check


def test_a_check_stops_a_langevin_chain_at_the_step_it_fires():
    steps = [0]

    def energy(x: torch.Tensor) -> torch.Tensor:
        steps[0] += 1
        return (x**2).sum(dim=(1, 2, 3))

    x = torch.zeros(2, 3, 4, 4)
    with interrupts.checking(stop_after(steps, 5), interval=0), pytest.raises(Stop):
        langevin_chain(energy, x, 1000, 0.01, 1.0, lambda t: torch.zeros_like(x))
    assert steps[0] == 5  # the check ran before step 6 and stopped it
    steps[0] = 0
    langevin_chain(energy, x, 20, 0.01, 1.0, lambda t: torch.zeros_like(x))
    assert steps[0] == 20  # outside the block, no check: the chain runs to its end


def test_a_check_stops_a_ddpm_chain_and_runs_at_most_once_per_interval():
    passes = [0]

    def eps_theta(x: torch.Tensor, t: int) -> torch.Tensor:
        passes[0] += 1
        return torch.zeros_like(x)

    abar = torch.linspace(0.999, 0.5, 1000)
    x0 = torch.zeros(1, 3, 4, 4)
    noise = lambda k: torch.zeros_like(x0)  # noqa: E731
    with interrupts.checking(stop_after(passes, 3), interval=0), pytest.raises(Stop):
        ddpm_chain(eps_theta, x0, 100, abar, noise)
    assert passes[0] == 3
    calls = []
    with interrupts.checking(calls.append, interval=3600):
        ddpm_chain(eps_theta, x0, 50, abar, noise)
    assert calls == []  # not yet due: the check costs nothing per step


def test_the_check_sees_the_batchs_images_times_the_share_of_steps_done():
    seen: list[float] = []
    x = torch.zeros(2, 3, 4, 4)
    with interrupts.checking(seen.append, interval=0):
        langevin_chain(lambda x: (x**2).sum(dim=(1, 2, 3)), x, 4, 0.01, 1.0, lambda t: 0 * x)
    assert seen == [0, 0.5, 1, 1.5]
    seen.clear()
    abar = torch.linspace(0.999, 0.5, 1000)
    with interrupts.checking(seen.append, interval=0):
        ddpm_chain(lambda x, t: torch.zeros_like(x), x, 5, abar, lambda k: torch.zeros_like(x))
    assert seen == pytest.approx([0, 0.4, 0.8, 1.2, 1.6])

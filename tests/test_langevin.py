"""The sampler's mathematics, reproducibility, and the purifier's contract."""

from __future__ import annotations

import pytest
import torch

from pureebm import compiled
from pureebm.langevin import Speedups, langevin_chain, purify, to_uint8, to_unit_range
from pureebm.nets import ConvEBM
from pureebm.purifiers.langevin import LangevinSpec

EPS, TAU = 1.25e-2, 1e-4


def gaussian_steps(shape: tuple[int, ...], seed: int, dtype=torch.float64):
    """Step noise for langevin_chain from one torch generator."""
    generator = torch.Generator().manual_seed(seed)
    return lambda t: torch.randn(shape, generator=generator, dtype=dtype)


def test_quadratic_energy_reaches_the_discrete_stationary_variance() -> None:
    """E(x) = |x|^2 / (2 s2) makes each step x' = (1 - a) x + eps * xi with
    a = eps^2 / (2 tau s2), whose stationary variance is eps^2 / (a (2 - a)),
    not the continuous-time tau * s2."""
    s2 = 7.8125  # a = 0.1
    a = EPS**2 / (2 * TAU * s2)
    discrete = EPS**2 / (a * (2 - a))
    continuous = TAU * s2
    x0 = torch.zeros(200_000, 1, dtype=torch.float64)
    noise = gaussian_steps(x0.shape, 0)
    x = langevin_chain(lambda x: (x**2).sum(1) / (2 * s2), x0, 250, EPS, TAU, noise)
    variance = x.var().item()
    assert variance == pytest.approx(discrete, rel=0.015)
    assert abs(variance - continuous) / continuous > 0.03


def test_flat_energy_increments_are_gaussian_with_variance_steps_eps2() -> None:
    steps = 40
    x0 = torch.randn(100_000, 2, dtype=torch.float64)
    x = langevin_chain(lambda x: 0.0 * x.sum(1), x0, steps, EPS, TAU, gaussian_steps(x0.shape, 1))
    increments = (x - x0).flatten()
    z = increments / (steps * EPS**2) ** 0.5
    assert increments.var().item() == pytest.approx(steps * EPS**2, rel=0.02)
    assert abs(z.mean().item()) < 0.01
    assert (z**4).mean().item() == pytest.approx(3.0, abs=0.06)  # Gaussian kurtosis
    assert (z.abs() < 1).double().mean().item() == pytest.approx(0.6827, abs=0.005)


def test_the_update_rule_matches_one_hand_computed_step() -> None:
    x0 = torch.tensor([[0.3, -0.2]], dtype=torch.float64)
    x1 = langevin_chain(lambda x: (x**2).sum(1), x0, 1, EPS, TAU, gaussian_steps(x0.shape, 5))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    expected = x0 - EPS**2 / 2 * (2 * x0) / TAU + EPS * noise
    torch.testing.assert_close(x1, expected)


def test_same_seed_same_output_other_seed_differs(cifar) -> None:
    net = ConvEBM(n_f=8)
    images = torch.from_numpy(cifar["images"][:6]).permute(0, 3, 1, 2)
    params = LangevinSpec(steps=5)
    a = purify(net, images, params, batch_size=4, device="cpu", seed=3)
    b = purify(net, images, params, batch_size=4, device="cpu", seed=3)
    c = purify(net, images, params, batch_size=4, device="cpu", seed=4)
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, c.images)


def test_purify_shapes_energies_and_no_parameter_gradients(cifar) -> None:
    net = ConvEBM(n_f=8)
    images = torch.from_numpy(cifar["images"][:5]).permute(0, 3, 1, 2)
    done: list[int] = []
    result = purify(net, images, LangevinSpec(steps=3), batch_size=2, seed=0, on_batch=done.append)
    assert result.images.dtype == torch.uint8 and result.images.shape == images.shape
    assert result.energy_before.shape == result.energy_after.shape == (5,)
    assert done == [2, 2, 1]
    assert all(p.grad is None for p in net.parameters())
    with torch.no_grad():
        expected_before = net(to_unit_range(images))
    torch.testing.assert_close(result.energy_before, expected_before)


def test_zero_steps_returns_the_input_exactly(cifar) -> None:
    images = torch.from_numpy(cifar["images"][:4]).permute(0, 3, 1, 2)
    assert torch.equal(to_uint8(to_unit_range(images)), images)
    net = ConvEBM(n_f=8)
    result = purify(net, images, LangevinSpec(steps=0), seed=0)
    assert torch.equal(result.images, images)
    with torch.no_grad():  # one energy per image serves as before and after
        torch.testing.assert_close(result.energy_before, net(to_unit_range(images)))
    assert torch.equal(result.energy_after, result.energy_before)


def test_chain_moves_downhill_on_the_energy() -> None:
    """With tiny noise the drift dominates: the energy must fall."""
    x0 = torch.full((64, 3), 2.0)
    noise = gaussian_steps(x0.shape, 0, torch.float32)
    x = langevin_chain(lambda x: (x**2).sum(1), x0, 100, 1e-3, 1e-4, noise)  # x *= 0.99 per step
    assert (x**2).sum(1).mean() < (x0**2).sum(1).mean() * 0.5


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_runs_the_same_chain_as_the_cpu(cifar) -> None:
    """T = 20 steps with the same seed: the noise is the same Philox stream on both
    devices, so the purified images agree up to float summation order (a few grey
    levels at most) and the energies to 1e-3."""
    torch.manual_seed(0)
    net = ConvEBM(n_f=8)
    images = torch.from_numpy(cifar["images"][:8]).permute(0, 3, 1, 2)
    params = LangevinSpec(steps=20)
    gpu = purify(net, images, params, device="cuda", seed=0)
    cpu = purify(net, images, params, device="cpu", seed=0)
    assert not torch.equal(cpu.images, images)  # the chain ran
    difference = (gpu.images.int() - cpu.images.int()).abs()
    assert difference.max() <= 2 and difference.float().mean() < 0.05
    torch.testing.assert_close(gpu.energy_after, cpu.energy_after, rtol=1e-3, atol=1e-3)


def test_a_sweep_keeps_each_step_of_the_same_chain(cifar) -> None:
    net = ConvEBM(n_f=8)
    images = torch.from_numpy(cifar["images"][:6]).permute(0, 3, 1, 2)
    run = purify(
        net, images, LangevinSpec(steps=6), batch_size=6, device="cpu", seed=2, sweep=[0, 3, 6]
    )
    assert torch.equal(run.sweep[0], images)
    assert torch.equal(run.sweep[6], run.images)
    shorter = purify(net, images, LangevinSpec(steps=3), batch_size=6, device="cpu", seed=2)
    assert torch.equal(run.sweep[3], shorter.images)
    assert not torch.equal(run.sweep[3], run.sweep[6])
    with pytest.raises(ValueError, match="goes past"):
        purify(net, images, LangevinSpec(steps=2), device="cpu", sweep=[3])


@pytest.mark.parametrize(
    "speedups, max_level, mean_level",
    [
        (Speedups(channels_last=True), 1, 0.01),
        (Speedups(compile=True), 1, 0.01),
        (Speedups(bf16=True), 8, 0.5),  # bfloat16 keeps 8 bits of mantissa
    ],
    ids=["channels_last", "compile", "bf16"],
)
def test_speedups_give_the_same_images_within_tolerance(cifar, speedups, max_level, mean_level):
    """Batches of 5 and 3: the compiled step runs the second padded to the first's shape."""
    torch.manual_seed(0)
    net = ConvEBM(n_f=8)
    images = torch.from_numpy(cifar["images"][:8]).permute(0, 3, 1, 2)
    params = LangevinSpec(steps=5, eps=0.02, tau=0.05)
    plain = purify(net, images, params, batch_size=5, seed=1)
    fast = purify(net, images, params, batch_size=5, seed=1, speedups=speedups)
    if speedups.compile:  # one compiled step for the model, run at 5 rows
        (step,) = compiled._BUILT[net].values()
        assert step.rows == 5
    difference = (plain.images.int() - fast.images.int()).abs()
    assert difference.max() <= max_level and difference.float().mean() <= mean_level
    torch.testing.assert_close(fast.energy_before, plain.energy_before, rtol=0.05, atol=1e-3)
    if speedups.bf16:  # the option really ran: bfloat16 energies are not float32 ones
        assert not torch.equal(fast.energy_before, plain.energy_before)

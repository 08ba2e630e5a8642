"""Per-image noise: the Philox generator against its published answers, Gaussian
statistics, and independence from the batch, canvas and blocking it is drawn in."""

from __future__ import annotations

import pytest
import torch

from pureebm import noise as noise_module
from pureebm.noise import ImageNoise, gaussian, philox4x32

# Random123's known-answer tests for Philox4x32-10: (counter, key) -> output
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize("counter, key, expected", KNOWN_ANSWERS)
def test_philox_matches_the_known_answers(counter, key, expected) -> None:
    words = philox4x32(tuple(map(torch.tensor, counter)), tuple(map(torch.tensor, key)))
    assert tuple(int(w) for w in words) == expected


def test_noise_is_standard_normal_and_uncorrelated() -> None:
    z = gaussian(0, torch.arange(8), torch.arange(1, 5), (3, 32, 32), torch.float64)
    assert z.shape == (4, 8, 3, 32, 32)
    flat = z.flatten()
    assert abs(flat.mean().item()) < 0.01
    assert flat.var().item() == pytest.approx(1.0, abs=0.01)
    assert (flat**4).mean().item() == pytest.approx(3.0, abs=0.06)
    assert (flat.abs() < 1).double().mean().item() == pytest.approx(0.6827, abs=0.005)

    def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
        return torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item()

    # neighbours along every counted axis: steps, images, channels, rows, columns
    assert abs(correlation(z[1:], z[:-1])) < 0.01
    assert abs(correlation(z[:, 1:], z[:, :-1])) < 0.01
    assert abs(correlation(z[:, :, 1:], z[:, :, :-1])) < 0.01
    assert abs(correlation(z[..., 1:, :], z[..., :-1, :])) < 0.01
    for shift in range(1, 5):  # the four normals of one Philox call, and the next call's
        assert abs(correlation(z[..., shift:], z[..., :-shift])) < 0.01


def test_an_images_noise_does_not_depend_on_its_batch_canvas_or_blocks(monkeypatch) -> None:
    alone = gaussian(11, torch.tensor([7]), torch.arange(3), (3, 33, 34))
    canvas = gaussian(11, torch.tensor([5, 7, 9]), torch.arange(3), (3, 40, 41))
    torch.testing.assert_close(canvas[:, 1, :, :33, :34], alone[:, 0], rtol=0, atol=0)
    assert not torch.equal(canvas[:, 0], canvas[:, 1])

    monkeypatch.setattr(noise_module, "MAX_COUNTERS", 16)  # a few rows, one step at a time
    per_step = ImageNoise(11, torch.tensor([5, 7, 9]), (3, 40, 41), 2, torch.float32)
    assert per_step.steps_at_once == 1
    for t in range(3):
        torch.testing.assert_close(per_step(t), canvas[t], rtol=0, atol=0)


def test_jobs_with_neighbouring_seeds_share_no_noise() -> None:
    a = gaussian(100, torch.arange(4), torch.arange(2), (3, 8, 8)).flatten(1)
    b = gaussian(101, torch.arange(4), torch.arange(2), (3, 8, 8)).flatten(1)
    for i in range(4):
        for j in range(4):
            assert not torch.equal(a[:, i], b[:, j])
    huge = gaussian(2**63 - 1, torch.tensor([2**32 - 1]), torch.tensor([2000]), (3, 4, 4))
    assert torch.isfinite(huge).all()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_noise_is_the_same_on_cuda_and_cpu() -> None:
    indices, steps = torch.tensor([3, 2**31 + 5]), torch.arange(2)
    cpu = gaussian(2**40 + 5, indices, steps, (3, 17, 19))
    cuda = gaussian(2**40 + 5, indices.cuda(), steps, (3, 17, 19)).cpu()
    torch.testing.assert_close(cuda, cpu, rtol=1e-5, atol=1e-5)

"""Gaussian noise that belongs to each image, not to the batch it runs in.

The noise of image i of a job with seed s, at chain step t, channel c and pixel
(y, x), is a fixed function of (s, i, t, c, y, x): the counter-based generator
Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
SC 2011; the one behind cuRAND and torch's CUDA generator), keyed by the 64-bit
seed and counted by position, turned into normals by Box-Muller:

    (w0, w1, w2, w3) = Philox4x32-10(counter = (x // 4, y, c + 2^16 t, i), key = s)
    u_a = (w_a + 1) / 2^32  in (0, 1]
    z[x = 4 (x // 4) + {0, 1}] = sqrt(-2 ln u_0) * (cos, sin)(2 pi u_1)
    z[x = 4 (x // 4) + {2, 3}] = sqrt(-2 ln u_2) * (cos, sin)(2 pi u_3)

So an image gets the same noise whatever batch, padded canvas, shard or batch
size it is purified in, jobs with different seeds share no stream, and a whole
batch's noise is a few vectorised integer operations (no per-image generator
calls, which would starve a GPU). Channels and steps are below 2^16, image
indices below 2^32.
"""

from __future__ import annotations

import hashlib
import math

import torch

PHILOX_MULTIPLIERS = (0xD2511F53, 0xCD9E8D57)
PHILOX_WEYL = (0x9E3779B9, 0xBB67AE85)
WORD = 0xFFFFFFFF
MAX_COUNTERS = 1 << 20  # Philox counters evaluated at once: bounds the int64 temporaries


def philox4x32(
    counter: tuple[torch.Tensor, ...], key: tuple[torch.Tensor, torch.Tensor], rounds: int = 10
) -> tuple[torch.Tensor, ...]:
    """Philox4x32 on int64 tensors holding 32-bit words (broadcast together).

    A 32 x 32-bit product fits in 64 bits; int64 arithmetic wraps, so masking
    recovers its high and low words.
    """
    c0, c1, c2, c3 = counter
    k0, k1 = key
    m0, m1 = PHILOX_MULTIPLIERS
    for _ in range(rounds):
        p0, p1 = c0 * m0, c2 * m1
        hi0, lo0, hi1, lo1 = (p0 >> 32) & WORD, p0 & WORD, (p1 >> 32) & WORD, p1 & WORD
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + PHILOX_WEYL[0]) & WORD, (k1 + PHILOX_WEYL[1]) & WORD
    return c0, c1, c2, c3


def gaussian(
    seed: int,
    indices: torch.Tensor,
    steps: torch.Tensor,
    shape: tuple[int, int, int],
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """N(0, 1) noise of shape (len(steps), len(indices), C, H, W) for images ``indices``
    of the job with ``seed``, on ``indices``' device."""
    channels, height, width = shape
    if channels >= 1 << 16 or (len(steps) and int(steps.max()) >= 1 << 16):
        raise ValueError("channels and steps must be below 2^16")
    device = indices.device
    quads = -(-width // 4)
    seed &= (1 << 64) - 1
    key = (torch.tensor(seed & WORD, device=device), torch.tensor(seed >> 32, device=device))
    per_row = len(steps) * len(indices) * channels * quads
    rows_at_once = max(1, MAX_COUNTERS // max(per_row, 1))
    out = torch.empty(
        len(steps), len(indices), channels, height, quads * 4, dtype=dtype, device=device
    )
    steps_and_channels = (
        steps.to(device=device, dtype=torch.int64).view(-1, 1, 1, 1, 1) << 16
    ) + torch.arange(channels, device=device).view(1, 1, -1, 1, 1)
    for y0 in range(0, height, rows_at_once):
        y1 = min(y0 + rows_at_once, height)
        counter = (
            torch.arange(quads, device=device).view(1, 1, 1, 1, -1),
            torch.arange(y0, y1, device=device).view(1, 1, 1, -1, 1),
            steps_and_channels,
            (indices.to(torch.int64) & WORD).view(1, -1, 1, 1, 1),
        )
        words = [(w + 1).to(torch.float64) / 2.0**32 for w in philox4x32(counter, key)]
        pairs = []
        for u_radius, u_angle in ((words[0], words[1]), (words[2], words[3])):
            radius, angle = torch.sqrt(-2.0 * torch.log(u_radius)), 2.0 * math.pi * u_angle
            pairs += [radius * torch.cos(angle), radius * torch.sin(angle)]
        out[:, :, :, y0:y1] = torch.stack(pairs, dim=-1).flatten(-2).to(dtype)
    return out[..., :width]


class ImageNoise:
    """Step t's noise for a batch of images of one job: ``noise(t)`` is N x C x H x W
    (t = 0: the initial noise), drawn a block of steps at a time."""

    def __init__(
        self,
        seed: int,
        indices: torch.Tensor,
        shape: tuple[int, int, int],
        last_step: int,
        dtype: torch.dtype,
    ) -> None:
        self.seed, self.indices, self.shape = seed, indices, shape
        self.last_step, self.dtype = last_step, dtype
        self.first, self.block = 0, torch.empty(0)
        self.steps_at_once = max(1, MAX_COUNTERS // max(len(indices) * math.prod(shape) // 4, 1))

    def __call__(self, step: int) -> torch.Tensor:
        if not self.first <= step < self.first + len(self.block):
            stop = max(min(step + self.steps_at_once, self.last_step + 1), step + 1)
            steps = torch.arange(step, stop)
            block = gaussian(self.seed, self.indices, steps, self.shape, self.dtype)
            self.first, self.block = step, block
        return self.block[step - self.first]


def derived_seed(seed: int, *labels: int) -> int:
    """The seed of a sub-stream of ``seed`` (a Reps round's phase, say): 62 bits of the
    sha256 of the numbers, so no two label paths share a stream."""
    text = "/".join(str(n) for n in (seed, *labels)).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big") >> 2

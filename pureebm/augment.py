"""Data augmentation shared by EBM training and the evaluation's classifiers."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def flip_and_crop(
    x: torch.Tensor,
    generator: torch.Generator,
    flip: bool = True,
    pad: int = 0,
    one_offset: bool = False,
) -> torch.Tensor:
    """Random horizontal flips, drawn per image, and reflect-padded random crops
    (N x C x H x W; ``generator`` on x's device), at an offset drawn per image or,
    with ``one_offset``, one offset for the whole batch (a cheaper recipe some
    training loops use)."""
    if flip:
        flipped = torch.rand(len(x), generator=generator, device=x.device) < 0.5
        x = torch.where(flipped[:, None, None, None], x.flip(3), x)
    if pad > 0:
        h, w = x.shape[2:]
        padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        draws = 1 if one_offset else len(x)
        offsets = torch.randint(0, 2 * pad + 1, (draws, 2), generator=generator, device=x.device)
        if one_offset:
            dy, dx = offsets[0].tolist()
            return padded[:, :, dy : dy + h, dx : dx + w]
        x = torch.stack(
            [padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets.tolist())]
        )
    return x

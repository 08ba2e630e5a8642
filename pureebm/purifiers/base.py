"""The purifier interface: what every family implements, and what the pipeline runs.

A purifier takes a batch of uint8 images (N x C x H x W, one padded size), their
positions in the job (image i draws its noise from (seed, positions[i]):
pureebm.noise) and a seed, and gives back the purified images and a per-image
score before and after (an EBM's energy, a DDPM's denoising error; NaN where the
family has none). ``pureebm.pipeline`` is the one batching loop: it decodes,
pads, buckets and chunks images for any purifier by the properties below.
No torch at import: the API imports the specs, which name these types.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from pureebm.registry import LoadedModel

ModelLoader = Callable[[str], "LoadedModel"]  # NAME:VERSION -> the loaded entry


@dataclass
class Purified:
    images: torch.Tensor  # uint8, N x C x H x W, on the CPU
    energy_before: torch.Tensor  # N: the input's score (an EBM's energy E(x_0))
    energy_after: torch.Tensor  # N: the returned 8-bit image's score
    sweep: dict[int, torch.Tensor] = field(default_factory=dict)  # t -> uint8 Psi_t(images)


class Purifier(ABC):
    image_size: int = 1  # sides shorter than this are edge-padded to it
    channels: int = 3  # 1: the model sees luma
    size_multiple: int = 1  # padded sides are a multiple of this
    maskable: bool = False  # images of different sizes may share a zero-padded batch
    name: str = ""  # what the pipeline's progress and errors call it

    @abstractmethod
    def purify_batch(
        self,
        images: torch.Tensor,
        positions: torch.Tensor,
        seed: int,
        sizes: torch.Tensor | None = None,
        sweep: Collection[int] = (),
    ) -> Purified:
        """Purify one batch. ``sizes`` (N x 2, only where ``maskable``): each image is
        valid in its top-left sizes[i]. ``sweep``: step counts t whose images Psi_t
        of the same chain come back too (Langevin only)."""


def no_sweep(purifier: Purifier, sweep: Collection[int]) -> None:
    if sweep:
        raise ValueError(f"the {purifier.name} purifier has no sweep over steps")


def built_with(spec: Any, model: Any) -> str:
    return spec.summary() + (f" on {model.manifest.ref}" if model is not None else "")

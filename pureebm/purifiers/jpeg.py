"""JPEG re-compression: the paper's strongest simple baseline, and a purifier of its
own, with a quality parameter. It needs no model and gives no score (NaN)."""

from __future__ import annotations

import io
from collections.abc import Collection
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from PIL import Image
from pydantic import Field

from pureebm.purifiers.base import Purified, Purifier, no_sweep
from pureebm.purifiers.spec import PurifierSpec, register

if TYPE_CHECKING:
    import torch


@register
class JPEGSpec(PurifierSpec):
    family: Literal["jpeg"] = "jpeg"
    needs_model: ClassVar[bool] = False
    quality: int = Field(75, ge=1, le=100, description="JPEG quality (1-100): lower removes more")

    def build(self, model: Any, load: Any, device: Any, speedups: Any) -> JPEGPurifier:
        return JPEGPurifier(self)


def jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    """An H x W x C uint8 image (C = 1 or 3) encoded as a baseline JPEG at ``quality``
    (4:2:0 chroma, Pillow's default) and decoded again."""
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[2] == 1 else image).save(
        buffer, format="JPEG", quality=quality
    )
    decoded = np.asarray(Image.open(buffer))
    return decoded[..., None] if decoded.ndim == 2 else decoded


class JPEGPurifier(Purifier):
    def __init__(self, spec: JPEGSpec) -> None:
        self.spec = spec
        self.name = spec.summary()

    def purify_batch(
        self,
        images: torch.Tensor,
        positions: torch.Tensor,
        seed: int,
        sizes: torch.Tensor | None = None,
        sweep: Collection[int] = (),
    ) -> Purified:
        import torch

        no_sweep(self, sweep)
        pixels = images.permute(0, 2, 3, 1).numpy()
        out = np.stack([jpeg_roundtrip(image, self.spec.quality) for image in pixels])
        none = torch.full((len(images),), float("nan"), dtype=torch.float64)
        return Purified(torch.from_numpy(out).permute(0, 3, 1, 2), none, none)

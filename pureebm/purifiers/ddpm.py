"""The PureDDPM purifier: diffuse to t*, then a DDPM's reverse chain back
(pureebm.diffusion holds the chain)."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from pureebm.purifiers.base import Purified, Purifier, built_with, no_sweep
from pureebm.purifiers.spec import PurifierSpec, register

if TYPE_CHECKING:
    import torch

    from pureebm.langevin import Speedups
    from pureebm.registry import LoadedModel
    from pureebm.registry.records import Manifest


@register
class DDPMSpec(PurifierSpec):
    family: Literal["ddpm"] = "ddpm"
    score: ClassVar[str | None] = "denoising error"
    steps: int = Field(
        75, ge=0, le=1000, description="t*: diffuse forward to t*, then run the reverse chain back"
    )

    def check(self, model: Manifest | None, load: Callable[[str], Manifest]) -> DDPMSpec:
        super().check(model, load)
        trained = model.weights.diffusion.trained_below  # type: ignore[union-attr]
        if self.steps > trained:
            raise ValueError(
                f"steps (t*) = {self.steps}: {model.name}:{model.version} is trained "  # type: ignore[union-attr]
                f"on t <= {trained} only"
            )
        return self

    def scoring(self) -> DDPMSpec:
        return DDPMSpec(steps=0)

    def passes(self) -> int:
        return max(self.steps, 1)  # t* U-Net passes

    def build(self, model: LoadedModel, load: Any, device: Any, speedups: Any) -> DDPMPurifier:
        return DDPMPurifier(self, model, device, speedups)


def size_multiple(unet_config: dict[str, Any]) -> int:
    """An image side the U-Net's downsampling divides: 2^(levels - 1)."""
    return 2 ** (len(unet_config.get("block_out_channels", (0,) * 4)) - 1)


class DDPMPurifier(Purifier):
    """A U-Net cannot be masked: a batch holds images of one padded size."""

    def __init__(
        self, spec: DDPMSpec, model: LoadedModel, device: torch.device, speedups: Speedups
    ) -> None:
        self.spec, self.model, self.device, self.speedups = spec, model, device, speedups
        self.image_size = model.manifest.image_size
        self.channels = model.manifest.channels
        self.size_multiple = size_multiple(model.manifest.weights.arch_kwargs)  # type: ignore[union-attr]
        self.name = built_with(spec, model)

    def purify_batch(
        self,
        images: torch.Tensor,
        positions: torch.Tensor,
        seed: int,
        sizes: torch.Tensor | None = None,
        sweep: Collection[int] = (),
    ) -> Purified:
        from pureebm.diffusion import purify

        no_sweep(self, sweep)
        schedule = self.model.manifest.weights.diffusion  # type: ignore[union-attr]
        return purify(
            self.model.net,
            images,
            schedule,
            self.spec.steps,
            len(images),
            self.device,
            seed,
            positions,
            self.speedups,
        )

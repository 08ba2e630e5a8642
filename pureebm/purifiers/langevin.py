"""The Langevin purifier Psi_T (PureEBM): a short chain on an EBM's energy
(pureebm.langevin holds the update rule).

    x_{t+1} = x_t - (eps^2 / 2) * grad_x E(x_t) / tau + eps * N(0, I),   t = 0 .. T-1
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from pureebm.purifiers.base import Purified, Purifier, built_with
from pureebm.purifiers.spec import PurifierSpec, register

if TYPE_CHECKING:
    import torch

    from pureebm.langevin import Speedups
    from pureebm.registry import LoadedModel

MAX_EPS = 0.1
MAX_DRIFT = 100.0  # eps^2 / (2 tau): the paper's is 0.78; past this a chain only saturates

Steps = Annotated[int, Field(ge=0, le=2000, description="Langevin steps T (0-2000)")]
Eps = Annotated[float, Field(gt=0, le=MAX_EPS, description="step size eps, also the noise scale")]
Tau = Annotated[float, Field(gt=0, le=1.0, description="temperature tau dividing the energy")]
InitNoise = Annotated[float, Field(ge=0, le=0.5, description="std of initial noise [0-0.5]")]


@register
class LangevinSpec(PurifierSpec):
    """Psi_T's parameters; the defaults are the paper's (T = 150, eps = 1.25e-2,
    tau = 1e-4). A model's preset carries the values calibrated for it."""

    family: Literal["langevin"] = "langevin"
    score: ClassVar[str | None] = "energy"
    steps: Steps = 150
    eps: Eps = 1.25e-2
    tau: Tau = 1e-4
    init_noise: InitNoise = 0.0

    @model_validator(mode="after")
    def check_drift(self) -> LangevinSpec:
        drift = self.eps**2 / (2 * self.tau)
        if not drift <= MAX_DRIFT:
            raise ValueError(
                f"the drift eps^2 / (2 tau) = {drift:.3g} is over {MAX_DRIFT:g}: raise tau or "
                "lower eps"
            )
        return self

    def scoring(self) -> LangevinSpec:
        return LangevinSpec(steps=0, eps=self.eps, tau=self.tau)

    def passes(self) -> int:
        return max(self.steps, 1)  # T energy gradients

    def build(
        self, model: LoadedModel, load: Any, device: torch.device, speedups: Speedups
    ) -> LangevinPurifier:
        return LangevinPurifier(self, model, device, speedups)


class LangevinPurifier(Purifier):
    maskable = True  # the energy nets mask every layer to each image's size

    def __init__(
        self, spec: LangevinSpec, model: LoadedModel, device: torch.device, speedups: Speedups
    ) -> None:
        self.spec, self.model, self.device, self.speedups = spec, model, device, speedups
        self.image_size = model.manifest.image_size
        self.channels = model.manifest.channels
        self.name = built_with(spec, model)

    def purify_batch(
        self,
        images: torch.Tensor,
        positions: torch.Tensor,
        seed: int,
        sizes: torch.Tensor | None = None,
        sweep: Collection[int] = (),
    ) -> Purified:
        from pureebm.langevin import purify

        return purify(
            self.model.net,
            images,
            self.spec,
            len(images),
            self.device,
            seed,
            sweep=sweep,
            speedups=self.speedups,
            sizes=sizes,
            indices=positions,
        )

"""Reps (PureGen): an EBM's Langevin purifier and a DDPM's, alternated R times.

    x <- Psi_DDPM(Psi_EBM(x))    R rounds: the EBM's T steps, then the DDPM at t* = L

Each phase draws its own noise (seed ``derived_seed(seed, round, phase)``), and the
image is rounded to 8 bits between phases. Scores are the EBM's energies.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from pureebm.purifiers.base import ModelLoader, Purified, Purifier, built_with, no_sweep
from pureebm.purifiers.ddpm import DDPMPurifier, DDPMSpec
from pureebm.purifiers.langevin import LangevinPurifier, LangevinSpec
from pureebm.purifiers.spec import register
from pureebm.refs import REF_PATTERN

if TYPE_CHECKING:
    import torch

    from pureebm.registry import LoadedModel
    from pureebm.registry.records import Manifest


@register
class RepsSpec(LangevinSpec):  # the EBM phase's fields, then the DDPM's
    family: Literal["reps"] = "reps"  # type: ignore[assignment]
    ddpm_model: str = Field(
        pattern=REF_PATTERN,
        description="the DDPM entry (NAME or NAME:VERSION) to alternate with the EBM",
    )
    rounds: int = Field(1, ge=1, le=20, description="R rounds of [EBM steps, then DDPM steps]")
    ddpm_steps: int | None = Field(
        None, ge=0, le=1000, description="t* of each DDPM phase (default: the DDPM's)"
    )

    @classmethod
    def defaults(cls, model: Manifest | None, load: Callable[[str], Manifest]) -> dict[str, Any]:
        return LangevinSpec.defaults(model, load)

    def check(self, model: Manifest | None, load: Callable[[str], Manifest]) -> RepsSpec:
        self.ebm_phase().check(model, load)
        ddpm = load(self.ddpm_model)
        if ddpm.purifier.family != "ddpm":
            raise ValueError("Reps alternates an EBM (model) with a DDPM (ddpm_model)")
        if model.channels != ddpm.channels:  # type: ignore[union-attr]
            raise ValueError(f"the EBM has {model.channels} channels, the DDPM {ddpm.channels}")  # type: ignore[union-attr]
        steps = ddpm.purifier.steps if self.ddpm_steps is None else self.ddpm_steps  # type: ignore[attr-defined]
        DDPMSpec(steps=steps).check(ddpm, load)
        pinned = f"{ddpm.name}:{ddpm.version}"
        return self.model_copy(update={"ddpm_model": pinned, "ddpm_steps": steps})

    def ebm_phase(self) -> LangevinSpec:
        return LangevinSpec(**self.model_dump(include=set(LangevinSpec.parameters())))

    def scoring(self) -> LangevinSpec:
        return self.ebm_phase().scoring()

    def passes(self) -> int:
        return self.rounds * (self.steps + (self.ddpm_steps or 0))

    def build(
        self, model: LoadedModel, load: ModelLoader, device: Any, speedups: Any
    ) -> RepsPurifier:
        ebm = self.ebm_phase().build(model, load, device, speedups)
        ddpm = DDPMSpec(steps=self.ddpm_steps or 0).build(
            load(self.ddpm_model), load, device, speedups
        )
        return RepsPurifier(self, ebm, ddpm, built_with(self, model))


class RepsPurifier(Purifier):
    def __init__(
        self, spec: RepsSpec, ebm: LangevinPurifier, ddpm: DDPMPurifier, name: str
    ) -> None:
        self.spec, self.ebm, self.ddpm, self.name = spec, ebm, ddpm, name
        self.scorer = LangevinPurifier(ebm.spec.scoring(), ebm.model, ebm.device, ebm.speedups)
        self.image_size = ebm.image_size
        self.channels = ebm.channels
        self.size_multiple = ddpm.size_multiple

    def purify_batch(
        self,
        images: torch.Tensor,
        positions: torch.Tensor,
        seed: int,
        sizes: torch.Tensor | None = None,
        sweep: Collection[int] = (),
    ) -> Purified:
        from pureebm.noise import derived_seed

        no_sweep(self, sweep)
        before = None
        for round_ in range(self.spec.rounds):
            langevin = self.ebm.purify_batch(images, positions, derived_seed(seed, round_, 0))
            before = langevin.energy_before if before is None else before
            images = self.ddpm.purify_batch(
                langevin.images, positions, derived_seed(seed, round_, 1)
            ).images
        after = self.scorer.purify_batch(images, positions, 0).energy_before
        return Purified(images, before, after)  # type: ignore[arg-type]

"""What the registry records (pureebm.registry reads and writes it); no torch.

Weights and presets are apart, as the Hugging Face cache keeps blobs apart from
snapshots:

- ``WeightsRecord``: one weights file, addressed by its sha256, and what made it
  (architecture, size, training);
- ``Preset``: ``NAME:VERSION``, naming one weights digest (none for a family that
  needs no model) and the purifier's defaults for it: its family's spec, the
  filter, the threshold of filter=auto, and the preset it was calibrated from;
- ``Manifest``: a preset with its weights' record, as loading and the API see it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pureebm.purifiers import Filter, Spec
from pureebm.refs import NAME_PATTERN, REF_PATTERN

SHA256 = r"^[0-9a-f]{64}$"


class Visit(BaseModel):
    """One training run of a lineage: a run resumed from an entry adds a visit to it."""

    iterations: int = Field(ge=0)
    wall_time_s: float = Field(ge=0)
    hardware: str
    tflops: float | None = Field(None, description="achieved TFLOP/s of the training step")
    quality: dict[str, float] = Field(
        {}, description="the card at the run's end, e.g. PureDDPM's PSNR at t*"
    )


class TrainingRecord(BaseModel):
    data: str  # what the model was trained on
    command: str
    iterations: int = Field(ge=0)  # this run's updates
    wall_time_s: float = Field(ge=0)  # ... and their seconds
    hardware: str
    resumed_from: str | None = None  # the entry whose (EMA) weights this run started from
    visits: list[Visit] = []  # every run of the lineage, the first one first, this one last

    @property
    def lineage(self) -> list[Visit]:
        """Every run of the lineage (one for a record from before visits were kept)."""
        if self.visits:
            return self.visits
        return [Visit(iterations=self.iterations, wall_time_s=self.wall_time_s,
                      hardware=self.hardware)]  # fmt: skip

    @property
    def total_iterations(self) -> int:
        return sum(v.iterations for v in self.lineage)

    @property
    def accelerator_seconds(self) -> float:
        """Seconds of updates on a GPU over the whole lineage."""
        return sum(v.wall_time_s for v in self.lineage if not v.hardware.startswith("CPU"))


class DiffusionSchedule(BaseModel):
    """A DDPM's noise schedule (diffusers' DDPMScheduler) and what it was trained on."""

    model_config = ConfigDict(frozen=True)

    num_train_timesteps: int = Field(1000, ge=1, le=10_000)
    beta_start: float = Field(1e-4, gt=0, lt=1)
    beta_end: float = Field(0.02, gt=0, lt=1)
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear"
    trained_below: int = Field(250, ge=1, description="t_max: the net saw t <= this only")
    score_step: int = Field(50, ge=1, description="t_s of the per-image denoising score")


class WeightsRecord(BaseModel):
    """models/_weights/<sha256>/weights.json, beside the file it describes."""

    sha256: str = Field(pattern=SHA256)
    file: str = Field(pattern=r"^[a-z0-9_.-]+\.safetensors$")
    architecture: str  # pureebm.nets' names, or "unet" (a diffusers UNet2DModel)
    arch_kwargs: dict[str, Any] = {}
    image_size: int = Field(ge=1)
    channels: int = Field(ge=1, le=4)
    data_range: tuple[float, float] = (-1.0, 1.0)
    diffusion: DiffusionSchedule | None = None  # a DDPM's noise schedule
    training: TrainingRecord
    created_at: datetime
    description: str = ""


class PresetFields(BaseModel):
    name: str = Field(pattern=NAME_PATTERN)
    version: int = Field(ge=1)
    purifier: Spec  # type: ignore[valid-type]
    filter: Filter | None = None  # the default energy filter (pureebm.filtering); None: none
    # filter=auto purifies images whose score is above this (pureebm.filtering)
    energy_threshold: float | None = None
    derived_from: str | None = Field(None, pattern=REF_PATTERN)  # the preset calibrated from
    created_at: datetime
    description: str = ""


class Preset(PresetFields):
    """models/<name>/<version>/preset.json."""

    weights: str | None = Field(None, pattern=SHA256)


class Manifest(PresetFields):
    """A preset with its weights' record."""

    weights: WeightsRecord | None = None

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def image_size(self) -> int:
        return self.weights.image_size if self.weights else 1

    @property
    def channels(self) -> int:
        return self.weights.channels if self.weights else 3

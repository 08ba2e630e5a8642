"""Parameter models shared by the engine, the registry, the CLI and the API; no torch.

- ``LangevinParams``: the purifier's T, eps, tau and initial noise, with their bounds
  (langevin.py states the update rule).
- ``LangevinOverrides``: the same fields, unset ones taken from a model's defaults;
  ``resolve`` is the one place where a request meets a model's calibration, and
  ``resolve_reps`` where it meets a second (DDPM) entry: ``RepsParams``.
- ``DiffusionSchedule``: a DDPM entry's noise schedule (diffusion.py states the chain).
- ``Manifest``: what a registry entry records (registry.py reads and writes it).
- ``TrainConfig``: every option of `pureebm train` (train.py runs it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"

Steps = Annotated[int, Field(ge=0, le=2000, description="Langevin steps T (0-2000)")]
MAX_EPS = 0.1
Eps = Annotated[float, Field(gt=0, le=MAX_EPS, description="step size eps, also the noise scale")]
Tau = Annotated[float, Field(gt=0, le=1.0, description="temperature tau dividing the energy")]
InitNoise = Annotated[float, Field(ge=0, le=0.5, description="std of initial noise [0-0.5]")]


def check_filter(value: float | str) -> float | str:
    if isinstance(value, float) and not 0 < value <= 1:
        raise ValueError("filter is a fraction 0 < k <= 1 or 'auto'")
    return value


Filter = Annotated[
    float | Literal["auto"],
    AfterValidator(check_filter),
    Field(
        description="energy-ranked purification (pureebm.filtering): purify only the fraction "
        "k (0 < k <= 1) of images of highest energy, or 'auto': those above the model's "
        "calibrated threshold; the others pass through byte-identical",
    ),
]


MAX_DRIFT = 100.0  # eps^2 / (2 tau): the paper's is 0.78; past this a chain only saturates


class LangevinParams(BaseModel):
    """Psi_T's parameters; the defaults are the paper's (T = 150, eps = 1.25e-2, tau = 1e-4)."""

    model_config = ConfigDict(frozen=True)

    steps: Steps = 150
    eps: Eps = 1.25e-2
    tau: Tau = 1e-4
    init_noise: InitNoise = 0.0

    @model_validator(mode="after")
    def check_drift(self) -> LangevinParams:
        drift = self.eps**2 / (2 * self.tau)
        if not drift <= MAX_DRIFT:
            raise ValueError(
                f"the drift eps^2 / (2 tau) = {drift:.3g} is over {MAX_DRIFT:g}: raise tau or "
                "lower eps"
            )
        return self


class RepsParams(BaseModel):
    """PureGen's combination (pureebm.pipeline.Reps): R rounds of [the EBM's T Langevin
    steps, then the DDPM at t* = ``ddpm_steps``]."""

    model_config = ConfigDict(frozen=True)

    ddpm_model: str  # NAME:VERSION of the DDPM entry
    rounds: int
    ddpm_steps: int


class LangevinOverrides(BaseModel):
    """Langevin parameters a caller may set; unset ones come from the model."""

    steps: Steps | None = None
    eps: Eps | None = None
    tau: Tau | None = None
    init_noise: InitNoise = 0.0
    filter: Filter | None = None
    ddpm_model: str | None = Field(
        None,
        pattern=NAME_PATTERN.removesuffix("$") + "(:[0-9]+)?$",
        description="Reps: a DDPM entry (NAME or NAME:VERSION) to alternate with the EBM",
    )
    rounds: int = Field(
        1, ge=1, le=20, description="Reps: R rounds of [EBM steps, then DDPM steps] (1-20)"
    )
    ddpm_steps: int | None = Field(
        None, ge=0, le=1000, description="Reps: t* of each DDPM phase (the DDPM's default)"
    )

    def resolve_reps(self, ebm: Manifest, ddpm: Manifest | None) -> RepsParams | None:
        """The combination on these two entries (``ddpm``: the entry ``ddpm_model``
        names); None without one. ValueError for a pair that does not combine."""
        if ddpm is None:
            if self.rounds != 1 or self.ddpm_steps is not None:
                raise ValueError("rounds and ddpm_steps need a ddpm_model (Reps)")
            return None
        if ebm.diffusion is not None or ddpm.diffusion is None:
            raise ValueError("Reps combines an EBM (model) with a DDPM (ddpm_model)")
        if ebm.channels != ddpm.channels:
            raise ValueError(f"the EBM has {ebm.channels} channels, the DDPM {ddpm.channels}")
        steps = ddpm.langevin.steps if self.ddpm_steps is None else self.ddpm_steps
        if steps > ddpm.diffusion.trained_below:
            raise ValueError(
                f"ddpm_steps (t*) = {steps}: {ddpm.name}:{ddpm.version} is trained on "
                f"t <= {ddpm.diffusion.trained_below} only"
            )
        return RepsParams(
            ddpm_model=f"{ddpm.name}:{ddpm.version}", rounds=self.rounds, ddpm_steps=steps
        )

    def resolve(self, manifest: Manifest) -> LangevinParams:
        """The job's parameters on ``manifest``'s model; ValueError for steps past
        what a DDPM was trained on."""
        defaults = manifest.langevin
        params = LangevinParams(
            steps=defaults.steps if self.steps is None else self.steps,
            eps=defaults.eps if self.eps is None else self.eps,
            tau=defaults.tau if self.tau is None else self.tau,
            init_noise=self.init_noise,
        )
        if manifest.diffusion is not None and params.steps > manifest.diffusion.trained_below:
            raise ValueError(
                f"steps (t*) = {params.steps}: {manifest.name}:{manifest.version} is trained "
                f"on t <= {manifest.diffusion.trained_below} only"
            )
        return params


class TrainingRecord(BaseModel):
    data: str  # what the EBM was trained on
    command: str
    iterations: int = Field(ge=0)
    wall_time_s: float = Field(ge=0)
    hardware: str


class DiffusionSchedule(BaseModel):
    """A DDPM's noise schedule (diffusers' DDPMScheduler) and what it was trained on."""

    model_config = ConfigDict(frozen=True)

    num_train_timesteps: int = Field(1000, ge=1, le=10_000)
    beta_start: float = Field(1e-4, gt=0, lt=1)
    beta_end: float = Field(0.02, gt=0, lt=1)
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear"
    trained_below: int = Field(250, ge=1, description="t_max: the net saw t <= this only")
    score_step: int = Field(50, ge=1, description="t_s of the per-image denoising score")


DIFFUSION_ARCHITECTURE = "unet"  # a diffusers UNet2DModel; its config is the arch_kwargs


class Manifest(BaseModel):
    name: str = Field(pattern=NAME_PATTERN)
    version: int = Field(ge=1)
    architecture: str
    arch_kwargs: dict[str, Any] = {}
    image_size: int = Field(ge=1)
    channels: int = Field(ge=1, le=4)
    data_range: tuple[float, float] = (-1.0, 1.0)
    # the purifier's defaults; for a DDPM (``diffusion`` set) only steps counts: it is t*
    langevin: LangevinParams = LangevinParams()
    diffusion: DiffusionSchedule | None = None  # set exactly for architecture "unet"
    weights: str = Field("model.safetensors", pattern=r"^[a-z0-9_.-]+\.safetensors$")
    filter: Filter | None = None  # the default energy filter (pureebm.filtering); None: none
    # filter=auto purifies images whose energy is above this (pureebm.filtering)
    energy_threshold: float | None = None
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    training: TrainingRecord
    created_at: datetime
    description: str = ""

    @model_validator(mode="after")
    def check_family(self) -> Manifest:
        if (self.architecture == DIFFUSION_ARCHITECTURE) != (self.diffusion is not None):
            raise ValueError(
                f"a schedule ('diffusion') goes with architecture {DIFFUSION_ARCHITECTURE!r} only"
            )
        if self.diffusion is not None and self.langevin.steps > self.diffusion.trained_below:
            raise ValueError("a DDPM's default steps (t*) must be within its trained t")
        return self


@dataclass
class TrainConfig:
    data: list[str]
    name: str = "ebm"
    recipe: str = "ml"  # "ml", "dsm", "dsm+ml" or "ddpm"
    pretrain_iterations: int = 0  # DSM updates before ML ones under "dsm+ml"
    sigma_min: float = 0.05  # DSM noise levels, in [-1, 1] units
    sigma_max: float = 0.3
    noise_blocks: list[int] = field(default_factory=lambda: [1])  # DSM noise grain, pixels
    architecture: str = "conv"
    n_f: int = 32
    unet: dict[str, Any] | None = None  # "ddpm": the UNet2DModel config (default: CPU_UNET)
    t_star: int = 75  # "ddpm": the entry's default purification depth t*
    trained_below: int = 250  # "ddpm": t_max, the last timestep trained
    iterations: int = 1000
    max_seconds: float = 0.0  # stop once the updates took this long in all (0: no limit)
    batch_size: int = 64
    bank_size: int = 10_000
    mcmc_steps: int = 100  # K Langevin steps per update
    eps: float = 1.25e-2
    tau: float = 1e-4
    lr: float = 1e-4
    grad_clip: float = 1.0  # max norm of the parameter gradient of L * tau
    lr_final: float = 1e-5
    warmup: int = 50
    rejuvenation: float = 0.05
    bank_noise: float = 0.015
    flip: bool = True
    crop_padding: int = 0  # random crops after reflect-padding by this many pixels
    holdout: int = 0  # the last `holdout` images are kept out of training
    skimage_crops: int = 0  # extra training crops from scikit-image's photographs
    calibrate_images: int = 32  # held-out images for the card's (eps, tau, T); 0: none
    psnr_floor: float = 30.0  # the calibration keeps at least this PSNR if it can
    checkpoint_every: int = 200
    checkpoint_seconds: float = 600.0  # ... or once this long has passed since the last one
    bf16: bool = False  # CUDA: bf16 autocast and channels_last in the updates
    out_dir: str = "runs/ebm"
    registry: str = "models"
    device: str = "auto"
    seed: int = 0
    command: str = ""
    extra: dict[str, str] = field(default_factory=dict)

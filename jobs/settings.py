"""What the API and the workers both read, from PUREEBM_* environment variables: where
jobs and models live, how job work is queued and retried, the input limits a
container is opened with, and the engine options. The API's own settings
(service.settings.Settings) extend these; a worker reads only these."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from pureebm.images import Limits
from pureebm.registry import DEFAULT_ROOT


class JobSettings(BaseSettings, Limits):
    """Also the input limits (pureebm.images.Limits, PUREEBM_MAX_PIXELS and the rest,
    README: Configuration), which the API checks at upload and workers again when
    they open a job's input."""

    model_config = SettingsConfigDict(
        env_prefix="PUREEBM_", env_file=".env", extra="ignore", frozen=False
    )

    # where things are
    redis_url: str | None = None  # None: `pureebm serve` starts an embedded Valkey server
    data_dir: Path = Path("data")  # job folders live in <data_dir>/jobs/<id>/
    registry: Path = DEFAULT_ROOT
    default_model: str | None = None  # None: the preset the registry's DEFAULT file names

    # job work on the queue
    shard_retries: int = Field(3, ge=0)
    shard_timeout_s: int = Field(6 * 3600, ge=10)
    # a killed worker's shard is retried after this, and it stops counting as alive after
    # two leases; it renews every third of a lease
    worker_lease_s: int = Field(10, ge=2)
    retention_s: int = Field(24 * 3600, ge=1)  # a job's data is deleted this long after it ends

    # while this file exists, workers pause inside each shard and finaliser, or only at
    # the points it names ("shard", "finalize"): tests use it to kill a worker at a
    # known point, an operator to look at one (worker.tasks.hold)
    hold_file: Path | None = None

    # engine options for GPU workers (README: measured effect); all off by default
    channels_last: bool = False
    bf16: bool = False
    compile: bool = False

    log_level: str = "INFO"

    @property
    def limits(self) -> Limits:
        """The limits alone, as a value the engine's functions take."""
        return Limits(**self.model_dump(include=set(Limits.model_fields)))

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

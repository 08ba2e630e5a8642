"""Every setting of the service and its workers, read from PUREEBM_* environment variables."""

from __future__ import annotations

import ipaddress
from functools import cached_property
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pureebm.images import Limits
from pureebm.registry import DEFAULT_MODEL, DEFAULT_ROOT


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PUREEBM_", env_file=".env", extra="ignore")

    # where things are
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    redis_url: str | None = None  # None: `pureebm serve` starts an embedded Valkey server
    redis_timeout_s: float = Field(5, gt=0)  # the API's wait for a Redis reply (then 503)
    data_dir: Path = Path("data")  # job folders live in <data_dir>/jobs/<id>/
    registry: Path = DEFAULT_ROOT
    default_model: str = DEFAULT_MODEL

    # authentication: sha256 hex digests of the accepted keys (never the keys themselves)
    api_key_hashes: list[str] = []
    api_keys_file: Path | None = None  # one sha256 hex digest per line, '#' comments

    # jobs
    shard_size: int = Field(1024, ge=1)  # at most this many images per RQ job
    shard_pixels: int = Field(64_000_000, ge=1)  # and at most this many pixels
    shard_retries: int = Field(3, ge=0)
    shard_timeout_s: int = Field(6 * 3600, ge=10)
    # a killed worker's shard is retried after this, and it stops counting as alive after
    # two leases; it renews every third of a lease
    worker_lease_s: int = Field(10, ge=2)
    worker_restarts: int = Field(5, ge=0)  # `serve` gives up on a worker after more crashes
    retention_s: int = Field(24 * 3600, ge=1)  # inputs and results are deleted after this
    cleanup_interval_s: float = Field(60, gt=0)
    max_active_jobs_per_key: int = Field(20, ge=1)  # more answers 429
    sync_max_images: int = Field(64, ge=1)
    sync_timeout_s: float = Field(120, gt=0)

    # input limits (README: Configuration); the per-image and archive ones default to the
    # engine's own (pureebm.images.Limits), which pureebm.archives checks
    max_upload_bytes: int = Field(8 << 30, ge=1)
    max_files: int = Field(1000, ge=1)
    body_timeout_s: float = Field(30, gt=0)  # a request body silent this long is cut (408)
    max_uploads_in_flight: int = Field(64, ge=1)  # bodies read at once; others wait, then 503
    max_pixels: int = Field(Limits.max_pixels, ge=1)
    max_job_pixels: int = Field(10_000_000_000, ge=1)  # all images of one job together
    # decoded images the API keeps per job for the workers (raw bytes; later ones are
    # decoded again by the workers)
    max_decoded_bytes: int = Field(4 << 30, ge=0)
    # free space kept on the data volume: a job that would eat into it is refused (507)
    disk_reserve_bytes: int = Field(1 << 30, ge=0)
    max_members: int = Field(Limits.max_members, ge=1)
    max_member_bytes: int = Field(Limits.max_member_bytes, ge=1)
    max_total_bytes: int = Field(Limits.max_total_bytes, ge=1)
    max_ratio: float = Field(Limits.max_ratio, gt=1)
    max_aspect: float = Field(Limits.max_aspect, ge=1)

    # while this file exists, workers pause inside each shard and finaliser, or only at
    # the points it names ("shard", "finalize"): tests use it to kill a worker at a
    # known point, an operator to look at one (worker.tasks.hold)
    hold_file: Path | None = None

    # engine options for GPU workers (README: measured effect); all off by default
    channels_last: bool = False
    bf16: bool = False
    compile: bool = False

    log_level: str = "INFO"

    # what answers without a key when keys are configured
    public_metrics: bool = True  # /metrics, for a scraper on a private network; false: a key
    docs: bool = True  # /docs and /openapi.json; false: not served at all

    @model_validator(mode="after")
    def auth_is_required_off_loopback(self) -> Settings:
        self.key_hashes  # noqa: B018 (reads the keys file now: a bad one fails at startup)
        if not self.auth_enabled and not is_loopback(self.host):
            raise ValueError(
                f"refusing to serve on {self.host} without API keys: set PUREEBM_API_KEY_HASHES "
                "or PUREEBM_API_KEYS_FILE, or bind to 127.0.0.1"
            )
        return self

    @cached_property
    def key_hashes(self) -> frozenset[str]:
        hashes = {h.strip().lower() for h in self.api_key_hashes}
        if self.api_keys_file is not None:
            listed = {
                line.split("#", 1)[0].strip().lower()
                for line in self.api_keys_file.read_text().splitlines()
            } - {""}
            if not listed:  # an empty keys file must not turn authentication off
                raise ValueError(f"{self.api_keys_file} lists no key digest")
            hashes |= listed
        return frozenset(hashes)

    @property
    def auth_enabled(self) -> bool:
        return bool(self.key_hashes)

    @property
    def limits(self) -> Limits:
        return Limits(
            max_pixels=self.max_pixels,
            max_members=self.max_members,
            max_member_bytes=self.max_member_bytes,
            max_total_bytes=self.max_total_bytes,
            max_ratio=self.max_ratio,
            max_aspect=self.max_aspect,
        )

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

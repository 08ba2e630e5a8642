"""The API's settings, read from PUREEBM_* environment variables (the workers' are
jobs.settings.JobSettings, which these extend)."""

from __future__ import annotations

import ipaddress
from functools import cached_property
from pathlib import Path

from pydantic import Field, SecretStr, model_validator

from jobs.settings import JobSettings
from jobs.webhooks import Targets


class Settings(JobSettings):
    """The API's settings: jobs.settings.JobSettings (shared with the workers) and what
    only the API and `pureebm serve` read."""

    # where things are
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    redis_timeout_s: float = Field(5, gt=0)  # the API's wait for a Redis reply (then 503)

    # authentication: sha256 hex digests of the accepted keys (never the keys themselves)
    api_key_hashes: list[str] = Field(default_factory=list)
    api_keys_file: Path | None = None  # one sha256 hex digest per line, '#' comments

    # jobs
    shard_size: int = Field(1024, ge=1)  # at most this many images per RQ job
    shard_pixels: int = Field(64_000_000, ge=1)  # and at most this many pixels
    worker_restarts: int = Field(5, ge=0)  # `serve` gives up on a worker after more crashes
    cleanup_interval_s: float = Field(60, gt=0)
    max_active_jobs_per_key: int = Field(20, ge=1)  # more answers 429
    sync_max_images: int = Field(64, ge=1)
    sync_timeout_s: float = Field(120, gt=0)

    # upload limits (README: Configuration); the per-image and archive ones are JobSettings'
    max_upload_bytes: int = Field(8 << 30, ge=1)
    max_files: int = Field(1000, ge=1)
    body_timeout_s: float = Field(30, gt=0)  # a request body silent this long is cut (408)
    max_uploads_in_flight: int = Field(64, ge=1)  # bodies read at once; others wait, then 503
    max_job_pixels: int = Field(10_000_000_000, ge=1)  # all images of one job together
    # a job's compute: its purified pixels x the purifier's network passes per image
    # (Langevin steps, DDPM t*, Reps rounds x both); about 1.6 h of the default model
    # on the lent H100 (docs/benchmarks.md)
    max_job_pixel_passes: int = Field(1_000_000_000_000, ge=1)
    # decoded images the API keeps per job for the workers (raw bytes; later ones are
    # decoded again by the workers)
    max_decoded_bytes: int = Field(4 << 30, ge=0)
    # free space kept on the data volume: a job that would eat into it is refused (507)
    disk_reserve_bytes: int = Field(1 << 30, ge=0)

    # what answers without a key when keys are configured
    public_metrics: bool = True  # /metrics, for a scraper on a private network; false: a key
    docs: bool = True  # /docs and /openapi.json; false: not served at all

    # webhooks (docs/api.md#webhooks): off while no master secret is set; each key's
    # signing secret is derived from it
    webhook_secret: SecretStr | None = Field(None, min_length=16)
    # beyond https to public addresses: hosts (names, *.domain) and networks (addresses,
    # CIDRs) that webhooks may reach over http too and at internal addresses
    webhook_allowed_hosts: list[str] = Field(default_factory=list)
    # then a delivery is given up on; attempts 1, 2, 4 ... s apart (12: about 34 minutes)
    webhook_attempts: int = Field(12, ge=1, le=30)  # 30 end within DELIVERY_TTL_S
    webhook_progress_interval_s: float = Field(5, gt=0)  # at most one progress event per job

    @model_validator(mode="after")
    def auth_is_required_off_loopback(self) -> Settings:
        self.key_hashes  # noqa: B018 (reads the keys file now: a bad one fails at startup)
        if not self.auth_enabled and not is_loopback(self.host):
            raise ValueError(
                f"refusing to serve on {self.host} without API keys: set PUREEBM_API_KEY_HASHES "
                "or PUREEBM_API_KEYS_FILE, or bind to 127.0.0.1"
            )
        return self

    @model_validator(mode="after")
    def webhook_allow_list_parses(self) -> Settings:
        self.webhook_targets  # noqa: B018 (a bad entry fails at startup)
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

    @cached_property
    def webhook_targets(self) -> Targets:
        return Targets.parse(self.webhook_allowed_hosts)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

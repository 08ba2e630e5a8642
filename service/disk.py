"""Space on the data volume: a job is admitted only if what it will write fits
above a reserve, so that a full disk refuses new work (507) instead of failing it
half-way, and readiness shows the free space."""

from __future__ import annotations

import shutil
from pathlib import Path

from service.problems import Problem

RESULT_FACTOR = 2  # a result can outgrow its input (JPEG re-encoded at quality 95, say)
RESULT_PIXEL_BYTES = 4  # ... or its pixels: purified pixels compress worse, a TIFF not at all


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def job_needs(input_bytes: int, pixels: list[int]) -> int:
    """Bytes a validated job will still write: its shards (RGB and alpha of every
    image) and its result, at most its pixels uncompressed or twice its input."""
    return 4 * sum(pixels) + max(RESULT_FACTOR * input_bytes, RESULT_PIXEL_BYTES * sum(pixels))


def check_space(path: Path, needed: int, reserve: int, held: int = 0) -> None:
    """Refuse (507) work needing ``needed`` bytes that would leave less than ``reserve``
    free on the volume holding ``path``, counting ``held`` bytes that the jobs
    admitted before may still write."""
    free = free_bytes(path)
    if free - held - needed < reserve:
        raise Problem(
            507,
            f"the data volume has {free} bytes free, {held} of them held for the jobs "
            f"admitted before; this job needs about {needed} and {reserve} are kept in "
            "reserve: retry later or send less",
            headers={"Retry-After": "60"},
        )

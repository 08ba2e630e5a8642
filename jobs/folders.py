"""The job folder, ``<data_dir>/jobs/<id>/``, and where each file of a job lives in it:

input/<file>          the upload as stored
decoded.npz           the images the API decoded while validating (a shard file;
                      a prefix of them, up to max_decoded_bytes)
shards/<i>.npz        each purification shard's purified images
shards/score-<i>.npy  with a filter: each scoring shard's energies
selection.npz         with a filter: the chosen positions, and where each
                      purification shard starts among them
result/<name>         the purified container
report.json           the energy report (jobs.record.Report)
preview.png           the job's card (pureebm.preview): samples, and the scores' histogram
"""

from __future__ import annotations

import os
from pathlib import Path

from jobs.keys import JOB_ID
from jobs.record import JobRecord

PRIVATE_UMASK = 0o077  # files 0600, folders 0700: one tenant's data, no other user's


def make_private(data_dir: Path) -> None:
    """From here on, this process and those it starts (Valkey, workers) create files
    and folders only their user can read; ``data_dir`` itself is made so too,
    which also closes whatever an earlier, laxer start left inside it."""
    os.umask(PRIVATE_UMASK)
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)


class JobFolders:
    def __init__(self, jobs_dir: Path) -> None:
        self.jobs_dir = jobs_dir

    def folder(self, job_id: str) -> Path:
        if not JOB_ID.match(job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        return self.jobs_dir / job_id

    def create(self, job_id: str) -> Path:
        """A new job's folder, with its input, shards and result folders."""
        folder = self.folder(job_id)
        for sub in ("input", "shards", "result"):
            (folder / sub).mkdir(parents=True)
        return folder

    def input_path(self, record: JobRecord) -> Path:
        return self.folder(record.id) / "input" / record.input_file

    def decoded_path(self, job_id: str) -> Path:
        return self.folder(job_id) / "decoded.npz"

    def shard_path(self, job_id: str, shard: int) -> Path:
        return self.folder(job_id) / "shards" / f"{shard:05d}.npz"

    def score_path(self, job_id: str, shard: int) -> Path:
        return self.folder(job_id) / "shards" / f"score-{shard:05d}.npy"

    def selection_path(self, job_id: str) -> Path:
        return self.folder(job_id) / "selection.npz"

    def result_path(self, record: JobRecord) -> Path:
        return self.folder(record.id) / "result" / record.result_name

    def report_path(self, job_id: str) -> Path:
        return self.folder(job_id) / "report.json"

    def preview_path(self, job_id: str) -> Path:
        return self.folder(job_id) / "preview.png"

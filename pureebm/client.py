"""A small client for pipelines, with httpx as its only dependency (no torch):

from pureebm.client import PureEBMClient
client = PureEBMClient("http://127.0.0.1:8000", api_key="...")
job = client.purify("train.zip", "train.purified.zip")  # the model's own settings

`AsyncPureEBMClient` has the same methods, awaitable, for asyncio programs.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx

from pureebm.atomic import atomic_path


def sent_name(disposition: str, fallback: str) -> str:
    """The file name a Content-Disposition header gives, reduced to its last part:
    RFC 6266's ``filename*=UTF-8''...`` (any name) before the plain ``filename=``."""
    extended = re.search(r"filename\*=UTF-8''([^;\s]+)", disposition, re.IGNORECASE)
    plain = re.search(r'filename="([^"]+)"', disposition)
    name = unquote(extended.group(1)) if extended else plain.group(1) if plain else ""
    name = Path(name.replace("\\", "/")).name
    return name if name not in ("", ".", "..") else fallback


class PureEBMError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status, self.detail = status, detail


def checked(response: httpx.Response) -> httpx.Response:
    """The response, or PureEBMError with the problem's detail and which fields failed
    (any status but 2xx: a proxy's redirect page is not a result)."""
    if not response.is_success:
        try:
            problem = response.json()
            detail = str(problem.get("detail", response.text))
            for error in problem.get("errors", []):  # which field failed, and why
                field = ".".join(str(part) for part in error.get("loc", [])[1:])
                detail += f"; {field}: {error.get('msg')}"
        except (ValueError, AttributeError):
            detail = response.text
        raise PureEBMError(response.status_code, detail)
    return response


def has_ended(job: dict[str, Any]) -> bool:
    """True for a finished job; PureEBMError for a failed or canceled one."""
    if job["status"] in ("failed", "canceled"):
        raise PureEBMError(409, f"job {job['id']} {job['status']}: {job.get('error')}")
    return job["status"] == "finished"


def submission(
    params: dict[str, Any], idempotency_key: str | None
) -> tuple[dict[str, str], dict[str, str]]:
    """The form fields and headers of a submission."""
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    return {k: str(v) for k, v in params.items() if v is not None}, headers


def refuse_existing(dest: Path, overwrite: bool) -> None:
    """FileExistsError for a file (or link) at ``dest``, unless ``overwrite``."""
    if not overwrite and not dest.is_dir() and (dest.exists() or dest.is_symlink()):
        raise FileExistsError(f"{dest} exists: pass --overwrite (overwrite=True) to replace it")


def destination(dest: Path, response: httpx.Response, job_id: str, overwrite: bool) -> Path:
    """``dest``, or in a folder ``dest`` the file name the service gives the result;
    an existing file there is refused unless ``overwrite``."""
    if dest.is_dir():
        dest = dest / sent_name(response.headers.get("content-disposition", ""), job_id)
    refuse_existing(dest, overwrite)
    return dest


class PureEBMClient:
    def __init__(self, url: str, api_key: str | None = None, timeout: float = 300.0) -> None:
        headers = {"X-API-Key": api_key} if api_key else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

    def __enter__(self) -> PureEBMClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return checked(self.http.request(method, path, **kwargs))

    def submit(
        self, path: str | Path, idempotency_key: str | None = None, **params: Any
    ) -> dict[str, Any]:
        """Upload an image or an archive; returns the job. The service tells the two
        apart by their content, so both go as the `archive` field."""
        path = Path(path)
        data, headers = submission(params, idempotency_key)
        with path.open("rb") as f:
            return self.request(
                "POST", "/v1/jobs", files={"archive": (path.name, f)}, data=data, headers=headers
            ).json()

    def job(self, job_id: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/jobs/{job_id}").json()

    def jobs(self, limit: int = 50, offset: int = 0) -> dict[str, Any]:
        """A page of the caller's jobs, newest first: {"total", "items": [job, ...]}."""
        params = {"limit": limit, "offset": offset}
        return self.request("GET", "/v1/jobs", params=params).json()

    def wait(
        self,
        job_id: str,
        poll_s: float = 1.0,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """Poll until the job ends; raises PureEBMError if it failed or was canceled,
        TimeoutError if it has not ended after ``timeout_s`` seconds (None: no limit)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            job = self.job(job_id)
            if on_progress is not None:
                on_progress(job)
            if has_ended(job):
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {job['status']} after {timeout_s} s")
            time.sleep(poll_s)

    def download(self, job_id: str, dest: str | Path, overwrite: bool = False) -> Path:
        """The job's result into ``dest``: a file, or a folder to write it into under
        the name the service gives it. Returns the file written. The bytes go to a
        hidden file beside it, renamed over it once whole: a cut stream leaves no
        file, and a link at ``dest`` is replaced, never written through. An existing
        file is refused unless ``overwrite``."""
        dest = Path(dest)
        with self.http.stream("GET", f"/v1/jobs/{job_id}/result") as response:
            if not response.is_success:
                checked(httpx.Response(response.status_code, content=response.read()))
            dest = destination(dest, response, job_id, overwrite)
            with atomic_path(dest) as partial, partial.open("wb") as out:
                for chunk in response.iter_bytes(1 << 20):
                    out.write(chunk)
        return dest

    def report(self, job_id: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/jobs/{job_id}/report").json()

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self.request("DELETE", f"/v1/jobs/{job_id}").json()

    def models(self) -> list[dict[str, Any]]:
        return self.request("GET", "/v1/models").json()

    def purify(
        self,
        path: str | Path,
        dest: str | Path,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        overwrite: bool = False,
        **params: Any,
    ) -> dict[str, Any]:
        """Submit, wait and download in one call; returns the finished job. An
        existing file at ``dest`` is refused before the upload, unless ``overwrite``."""
        refuse_existing(Path(dest), overwrite)
        job = self.submit(path, **params)
        job = self.wait(job["id"], on_progress=on_progress)
        self.download(job["id"], dest, overwrite)
        return job


class AsyncPureEBMClient:
    """PureEBMClient's methods for asyncio: ``async with AsyncPureEBMClient(url) as c:
    job = await c.purify("train.zip", "out.zip")``."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 300.0) -> None:
        headers = {"X-API-Key": api_key} if api_key else {}
        self.http = httpx.AsyncClient(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

    async def __aenter__(self) -> AsyncPureEBMClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return checked(await self.http.request(method, path, **kwargs))

    async def submit(
        self, path: str | Path, idempotency_key: str | None = None, **params: Any
    ) -> dict[str, Any]:
        path = Path(path)
        data, headers = submission(params, idempotency_key)
        with path.open("rb") as f:  # streamed from the file (read in the event loop)
            files = {"archive": (path.name, f)}
            response = await self.request(
                "POST", "/v1/jobs", files=files, data=data, headers=headers
            )
        return response.json()

    async def job(self, job_id: str) -> dict[str, Any]:
        return (await self.request("GET", f"/v1/jobs/{job_id}")).json()

    async def jobs(self, limit: int = 50, offset: int = 0) -> dict[str, Any]:
        params = {"limit": limit, "offset": offset}
        return (await self.request("GET", "/v1/jobs", params=params)).json()

    async def wait(
        self,
        job_id: str,
        poll_s: float = 1.0,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        async with asyncio.timeout(timeout_s):
            while True:
                job = await self.job(job_id)
                if on_progress is not None:
                    on_progress(job)
                if has_ended(job):
                    return job
                await asyncio.sleep(poll_s)

    async def download(self, job_id: str, dest: str | Path, overwrite: bool = False) -> Path:
        dest = Path(dest)
        async with self.http.stream("GET", f"/v1/jobs/{job_id}/result") as response:
            if not response.is_success:
                checked(httpx.Response(response.status_code, content=await response.aread()))
            dest = destination(dest, response, job_id, overwrite)
            with atomic_path(dest) as partial, partial.open("wb") as out:
                async for chunk in response.aiter_bytes(1 << 20):
                    await asyncio.to_thread(out.write, chunk)  # a slow disk holds no other task
        return dest

    async def report(self, job_id: str) -> dict[str, Any]:
        return (await self.request("GET", f"/v1/jobs/{job_id}/report")).json()

    async def cancel(self, job_id: str) -> dict[str, Any]:
        return (await self.request("DELETE", f"/v1/jobs/{job_id}")).json()

    async def models(self) -> list[dict[str, Any]]:
        return (await self.request("GET", "/v1/models")).json()

    async def purify(
        self,
        path: str | Path,
        dest: str | Path,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        overwrite: bool = False,
        **params: Any,
    ) -> dict[str, Any]:
        refuse_existing(Path(dest), overwrite)
        job = await self.submit(path, **params)
        job = await self.wait(job["id"], on_progress=on_progress)
        await self.download(job["id"], dest, overwrite)
        return job

"""service/openapi.py: the OpenAPI document (errors as problem+json, descriptions
where readers look, a generated client that type-checks) and the docs pages,
rendered offline in a real browser against a real uvicorn."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.problems import PROBLEM_JSON, ProblemDetails
from service.schemas import JobResource, PurifyParams
from service.settings import Settings
from tests.stack import Stack

PROBLEM_SCHEMA = {"$ref": "#/components/schemas/ProblemDetails"}
# the health checks answer 503 with their own report, not a problem
HEALTH_REPORTS = {("/healthz", "503"): "Health", ("/readyz", "503"): "Readiness"}
CHROMIUM = shutil.which("chromium")
# Swagger UI's colours for GET and POST operations: present only once its CSS applied
GET_BLUE, POST_GREEN = (97, 175, 254), (73, 204, 144)


def make_app(tmp: Path, **settings: Any) -> FastAPI:
    """The app, in this process, on a Redis that is not there (port 1 refuses)."""
    tempdir = tempfile.tempdir  # create_app spools uploads to the data volume
    try:
        return create_app(Settings(redis_url="redis://127.0.0.1:1/0", data_dir=tmp, **settings))
    finally:
        tempfile.tempdir = tempdir


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    return make_app(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def document(app: FastAPI) -> dict[str, Any]:
    return app.openapi()


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def properties(node: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every property of every object schema anywhere in ``node``."""
    if isinstance(node, dict):
        if isinstance(node.get("properties"), dict):
            yield from node["properties"].items()
        for value in node.values():
            yield from properties(value)
    elif isinstance(node, list):
        for value in node:
            yield from properties(value)


def resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    name = schema["$ref"].removeprefix("#/components/schemas/")
    return document["components"]["schemas"][name]


def test_every_error_is_a_problem_with_an_example(document: dict[str, Any]) -> None:
    for path, method, operation in operations(document):
        responses = operation["responses"]
        assert "500" in responses, (method, path)
        for status, response in responses.items():
            where = (method, path, status)
            if int(status) < 400:
                continue
            if (path, status) in HEALTH_REPORTS:
                schema = response["content"]["application/json"]["schema"]
                assert resolve(document, schema)["title"] == HEALTH_REPORTS[path, status]
                continue
            assert list(response["content"]) == [PROBLEM_JSON], where
            content = response["content"][PROBLEM_JSON]
            assert content["schema"] == PROBLEM_SCHEMA, where
            example = ProblemDetails.model_validate(content["example"])
            assert (example.status, example.instance) == (int(status), path), where
            assert set(content["example"]) <= set(ProblemDetails.model_fields), where
    problem = document["components"]["schemas"]["ProblemDetails"]
    assert set(problem["required"]) == {"title", "status", "detail", "instance"}
    assert {"errors", "job_status", "deleted_at", "job"} <= set(problem["properties"])
    assert "HTTPValidationError" not in json.dumps(document)  # FastAPI's shape, never sent


def test_problems_sent_match_the_schema(app: FastAPI) -> None:
    """Real answers: a validation error, an unknown route, and no queue."""
    client = TestClient(app, raise_server_exceptions=False)  # no lifespan: no cleaner
    answers = {
        422: client.get("/v1/jobs", params={"offset": -1}),
        404: client.get("/nowhere"),
        503: client.get("/v1/jobs/3f2c9a7e"),
    }
    for status, answer in answers.items():
        assert answer.status_code == status, answer.text
        assert answer.headers["content-type"] == PROBLEM_JSON
        assert set(answer.json()) <= set(ProblemDetails.model_fields), answer.json()
        assert ProblemDetails.model_validate(answer.json()).status == status
    errors = ProblemDetails.model_validate(answers[422].json()).errors
    assert errors is not None and errors[0].loc == ["query", "offset"]


def test_descriptions_sit_on_their_property(document: dict[str, Any]) -> None:
    """Not only inside an anyOf member (pydantic's place for ``X | None``), where
    Swagger UI and client generators do not look."""
    for name, prop in properties(document):
        for member in [*prop.get("anyOf", []), *prop.get("oneOf", [])]:
            assert "description" not in member, (name, prop)
    for path, method, operation in operations(document):
        for parameter in operation.get("parameters", []):
            assert parameter.get("description"), (method, path, parameter["name"])


def test_the_upload_form_is_one_object_with_every_field_described(
    document: dict[str, Any],
) -> None:
    for path in ("/v1/jobs", "/v1/purify"):
        body = document["paths"][path]["post"]["requestBody"]["content"]
        form = resolve(document, body["multipart/form-data"]["schema"])
        assert "allOf" not in form
        assert {*PurifyParams.model_fields, "files", "archive"} <= set(form["properties"])
        for name, field in form["properties"].items():
            assert field.get("description"), (path, name)
        assert form["properties"]["archive"]["anyOf"][0]["format"] == "binary"
        assert form["properties"]["files"]["anyOf"][0]["items"]["format"] == "binary"


def test_the_job_example_is_a_job(document: dict[str, Any]) -> None:
    (example,) = document["components"]["schemas"]["JobResource"]["examples"]
    assert JobResource.model_validate(example).params.purifier.family == "langevin"


def test_a_generated_client_type_checks(document: dict[str, Any], tmp_path: Path) -> None:
    """openapi-python-client generates a client that mypy --strict accepts: every
    operation, the problem bodies, the upload form with its file parts."""
    (tmp_path / "openapi.json").write_text(json.dumps(document))
    binary = dict.fromkeys(
        ["image/png", "image/tiff", "application/zip", "application/x-tar", "application/gzip"],
        "application/octet-stream",
    )
    # Its default hooks run `ruff check --fix-only`, whose default rules (PYI036)
    # retype the client's `__exit__(*args: Any)` to `object`, which mypy refuses.
    config = {"post_hooks": [], "content_type_overrides": binary}
    (tmp_path / "config.json").write_text(json.dumps(config))
    generator = [sys.executable, "-m", "openapi_python_client", "generate", "--meta", "none"]
    generated = subprocess.run(
        [*generator, "--path", "openapi.json", "--config", "config.json", "--output-path", "api"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert generated.returncode == 0 and "Warning" not in generated.stdout, generated.stdout
    names = {p.stem for p in (tmp_path / "api" / "api").glob("*/*.py")} - {"__init__"}
    assert names == {operation["operationId"] for _, _, operation in operations(document)}
    form = (tmp_path / "api" / "models" / "body_submit.py").read_text()
    assert "files: list[File] | None | Unset" in form and "archive: File | None | Unset" in form
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", ".mypy_cache", "api"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_docs_can_be_closed(tmp_path: Path) -> None:
    client = TestClient(make_app(tmp_path, docs=False))
    for path in ("/docs", "/redoc", "/docs/assets/swagger-ui.css", "/openapi.json"):
        assert client.get(path).status_code == 404, path


def render(url: str, out: Path) -> tuple[str, list[str]]:
    """``url`` in headless Chromium with every host but 127.0.0.1 unresolvable: its
    DOM once rendered, and the URLs the page requested (from Chromium's NetLog; the
    browser's own background requests have no initiator). Writes ``out``.png."""
    netlog = out.with_suffix(".netlog.json")
    shown = subprocess.run(
        [
            CHROMIUM or "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={out.with_suffix('.profile')}",
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
            f"--log-net-log={netlog}",
            "--window-size=1280,900",
            "--virtual-time-budget=5000",
            f"--screenshot={out.with_suffix('.png')}",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert shown.returncode == 0, shown.stderr[-3000:]
    log = json.loads(netlog.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    requested = [
        event["params"]["url"]
        for event in log["events"]
        if event["type"] == start
        and "url" in event.get("params", {})
        and event["params"].get("initiator") != "not an origin"
    ]
    return shown.stdout, requested


def has_colour(image: np.ndarray, rgb: tuple[int, int, int]) -> bool:
    return bool((np.abs(image[..., :3].astype(int) - rgb).max(axis=-1) <= 8).any())


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (`make test` installs Debian's)")
def test_docs_render_offline_in_a_browser(tmp_path: Path) -> None:
    """/docs (Swagger UI) and /redoc draw every route with nothing from the network:
    their pages name only this service's paths, and every request they make goes to it."""
    (tmp_path / "registry").mkdir()
    stack = Stack(tmp_path, tmp_path / "registry")
    try:
        with stack.client(key=None) as anonymous:  # the docs need no key
            paths = list(anonymous.get("/openapi.json").json()["paths"])
            for page in ("/docs", "/redoc"):
                answer = anonymous.get(page)
                assert answer.headers["content-security-policy"].startswith("default-src 'self'")
                html = answer.text
                assert "://" not in html
                assert all(
                    link.startswith(("/docs/assets/", "/openapi.json"))
                    for link in re.findall(r'(?:src|href|spec-url)="([^"]*)"', html)
                )
        swagger, requested = render(f"{stack.url}/docs", tmp_path / "docs")
        assert all(url.startswith(stack.url) for url in requested), requested
        assert {
            f"{stack.url}/docs/assets/swagger-ui-bundle.js",
            f"{stack.url}/openapi.json",
        } <= set(requested)
        assert 'class="swagger-ui' in swagger
        for path in paths:
            assert f'data-path="{path}"' in swagger, path
        screenshot = np.asarray(Image.open(tmp_path / "docs.png"))
        assert screenshot.shape[:2] == (900, 1280)
        assert has_colour(screenshot, GET_BLUE) and has_colour(screenshot, POST_GREEN)
        redoc, requested = render(f"{stack.url}/redoc", tmp_path / "redoc")
        assert all(url.startswith(stack.url) for url in requested), requested
        assert f"{stack.url}/docs/assets/redoc.standalone.js" in requested
        assert "/v1/jobs/{job_id}/result" in redoc and "Purify Now" in redoc
    finally:
        stack.stop()

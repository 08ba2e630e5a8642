"""The API's description of itself: the OpenAPI document and the pages that show it.

The document is FastAPI's, refined in one place: errors are problem+json
(service.problems), form bodies are one flat object, and descriptions sit on the
property they describe. Swagger UI (/docs) and ReDoc (/redoc) load their scripts
and styles from this process, the copies the fastapi-offline package ships, so
the docs work with no network (FastAPI's "self-hosting JavaScript and CSS for
docs").
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles

from service.problems import PROBLEM_JSON, ProblemDetails
from service.schemas import JOB_EXAMPLE

COMPONENTS = "#/components/schemas/"
VALIDATION_ERROR = COMPONENTS + "HTTPValidationError"  # FastAPI's 422 body
ASSETS_URL = "/docs/assets"
# The pages may load nothing from elsewhere: ReDoc would fetch its logo from a CDN.
# Both pages run an inline script and inline styles; ReDoc searches in a blob: worker.
DOCS_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:"
)
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def operation_id(route: APIRoute) -> str:
    """The route function's name (submit, get_job): what generated clients call the
    operation and its form body, rather than FastAPI's name, path and method."""
    return route.name


def serve_document(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if not app.openapi_schema:
            app.openapi_schema = refined(FastAPI.openapi(app))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def serve_pages(app: FastAPI) -> None:
    """Swagger UI at /docs and ReDoc at /redoc, with every asset served from here."""
    app.mount(ASSETS_URL, StaticFiles(packages=[("fastapi_offline", "static")]), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        page = get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} API",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
        )
        page.headers["Content-Security-Policy"] = DOCS_POLICY
        return page

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        page = get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} API",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )
        page.headers["Content-Security-Policy"] = DOCS_POLICY
        return page


def refined(document: dict[str, Any]) -> dict[str, Any]:
    """FastAPI's ``document``, refined in place (see the module's docstring)."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    problem = ProblemDetails.model_json_schema(ref_template=COMPONENTS + "{model}")
    schemas |= problem.pop("$defs", {}) | {"ProblemDetails": problem}
    # here, not on the model: FastAPI writes the document without nulls, examples' too
    schemas["JobResource"]["examples"] = [JOB_EXAMPLE]
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                drop_generic_validation_error(operation)
                name_instances(operation, path)
                flatten_form(operation, schemas)
    drop_unreferenced(document)
    for schema in schemas.values():
        lift_descriptions(schema)
    return document


def drop_generic_validation_error(operation: dict[str, Any]) -> None:
    """FastAPI gives every route with a parameter, even one no value can fail (a
    path's string), a 422 in an error shape this service never sends; a route that
    can answer 422 declares its problem+json one."""
    responses = operation["responses"]
    content = responses.get("422", {}).get("content", {})
    if content.get("application/json", {}).get("schema") == {"$ref": VALIDATION_ERROR}:
        del responses["422"]


def name_instances(operation: dict[str, Any], path: str) -> None:
    """A problem's ``instance`` is the request's path: each example names its route."""
    for response in operation["responses"].values():
        example = response.get("content", {}).get(PROBLEM_JSON, {}).get("example")
        if example is not None:
            example["instance"] = path


def flatten_form(operation: dict[str, Any], schemas: dict[str, Any]) -> None:
    """FastAPI describes a form model beside file parts as allOf [the model, {the
    files}], and a file as a string with a contentMediaType; client generators keep
    the model and drop the file parts, and send a file as text. So the form becomes
    one object with every field, and a file is also ``format: binary``, as OpenAPI
    3.0 has it."""
    form = operation.get("requestBody", {}).get("content", {}).get("multipart/form-data")
    if form is None:
        return
    body = schemas[form["schema"]["$ref"].removeprefix(COMPONENTS)]
    for part in body.pop("allOf", []):
        model = schemas[part["$ref"].removeprefix(COMPONENTS)]
        body["properties"] = model["properties"] | body.get("properties", {})
        required = [*model.get("required", []), *body.get("required", [])]
        if required:
            body["required"] = required
    mark_files_binary(body)


def mark_files_binary(node: Any) -> None:
    if isinstance(node, dict):
        if node.get("type") == "string" and "contentMediaType" in node:
            node.setdefault("format", "binary")
        for value in node.values():
            mark_files_binary(value)
    elif isinstance(node, list):
        for value in node:
            mark_files_binary(value)


def drop_unreferenced(document: dict[str, Any]) -> None:
    """Drop the schemas nothing refers to any more: the models flattened into forms,
    FastAPI's 422 body."""
    schemas = document["components"]["schemas"]
    used: set[str] = set()
    pending = references(document["paths"])
    while pending:
        name = pending.pop()
        if name not in used:
            used.add(name)
            pending |= references(schemas[name])
    for name in set(schemas) - used:
        del schemas[name]


def references(node: Any) -> set[str]:
    """The names of the schemas ``node`` refers to."""
    if isinstance(node, dict):
        own = {node["$ref"].removeprefix(COMPONENTS)} if "$ref" in node else set()
        return own.union(*(references(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(references(value) for value in node))
    return set()


def lift_descriptions(schema: dict[str, Any]) -> None:
    """Pydantic puts the description of an ``Annotated[X, Field(description=...)] |
    None`` on anyOf's X member, where Swagger UI and client generators do not look:
    move it to the property."""
    for prop in schema.get("properties", {}).values():
        for member in prop.get("anyOf", []):
            description = member.pop("description", None)
            if description is not None:
                prop.setdefault("description", description)

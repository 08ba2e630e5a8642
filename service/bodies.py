"""Request bodies: refused before a byte is read when the caller has no valid key
or announces too much, and cut off when they run over the limit or stall.

One ASGI middleware in front of the app, so that neither memory nor disk is spent
on a body the request will not be allowed to send: the multipart parser (which
spools every part it reads) only ever sees authenticated, bounded, moving bodies.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.auth import authenticate
from service.problems import Problem, problem
from service.settings import Settings

WITH_BODY = {"POST", "PUT", "PATCH"}
FORM_PATHS = {"/v1/jobs", "/v1/purify"}  # the routes whose body is the upload form
RAW_BODY = (
    "the body is not a multipart form: send images as form parts, `-F files=@a.png` "
    "or `-F archive=@data.zip` with curl (a raw body, as `--data-binary` sends, is not read)"
)


class BodyGuard:
    """For requests that carry a body:

    - the API key is checked from the headers first (401/403 with the body unread);
    - a declared Content-Length over ``max_upload_bytes`` is refused at once (413);
    - a body that streams past it (chunked, or longer than declared) is cut (413);
    - a body that sends nothing for ``body_timeout_s`` is cut (408): a client that
      declares more than it sends holds no connection open for long;
    - at most ``max_uploads_in_flight`` bodies are being read at once (each costs
      buffers in this process; a waiting one stays in the kernel's socket buffer):
      a body's turn ends when its last byte has come (not when the request ends,
      which may validate or wait for minutes), and a request that waits
      ``body_timeout_s`` for its turn is answered 503. Like a proxy's body timeout,
      ``body_timeout_s`` bounds each wait for more bytes, not the whole body.
    """

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.settings = app, settings
        self.limit = settings.max_upload_bytes
        self.in_flight = asyncio.Semaphore(settings.max_uploads_in_flight)
        self.over_limit = f"the upload is over the {self.limit}-byte limit"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in WITH_BODY:
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        try:
            authenticate(self.settings, headers.get("x-api-key"), headers.get("authorization"))
        except Problem as e:
            response = problem(scope["path"], e.status_code, str(e.detail), e.headers)
            return await response(scope, receive, send)
        form = headers.get("content-type", "").lower().startswith("multipart/form-data")
        if scope["path"] in FORM_PATHS and not form:
            return await problem(scope["path"], 422, RAW_BODY)(scope, receive, send)
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await problem(scope["path"], 413, self.over_limit)(scope, receive, send)
        timeout = self.settings.body_timeout_s
        try:
            await asyncio.wait_for(self.in_flight.acquire(), timeout)
        except TimeoutError:
            busy = f"{self.settings.max_uploads_in_flight} uploads are in flight: retry shortly"
            return await problem(scope["path"], 503, busy, {"Retry-After": "5"})(
                scope, receive, send
            )
        held = True  # the turn: until the body is in, is cut, or the request ends

        def end_turn() -> None:
            nonlocal held
            if held:
                held = False
                self.in_flight.release()

        try:
            await self.read_guarded(scope, receive, send, timeout, end_turn)
        finally:
            end_turn()

    async def read_guarded(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        timeout: float,
        end_turn: Callable[[], None],
    ) -> None:
        received, complete, answered = 0, False, False

        async def cut(status: int, reason: str) -> Message:
            """Answer now, and tell the app that its client has gone: it stops reading,
            and whatever it answers is dropped (no exception runs up the stack)."""
            nonlocal answered
            answered = True
            end_turn()
            await problem(scope["path"], status, reason)(scope, receive, send)
            return {"type": "http.disconnect"}

        async def guarded() -> Message:
            nonlocal received, complete
            if complete or answered:  # after the body, receive() waits for the disconnect
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), timeout)
            except TimeoutError:
                return await cut(408, f"the body sent nothing for {timeout:g} s")
            received += len(message.get("body", b""))
            complete = not message.get("more_body", False)
            if received > self.limit:
                return await cut(413, self.over_limit)
            if complete:
                end_turn()
            return message

        async def unless_answered(message: Message) -> None:
            if not answered:
                await send(message)

        await self.app(scope, guarded, unless_answered)

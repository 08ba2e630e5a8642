"""Request bodies: refused before a byte is read when the caller has no valid key
or announces too much, and cut off when they run over the limit or stall.

One ASGI middleware in front of the app, so that neither memory nor disk is spent
on a body the request will not be allowed to send: the multipart parser (which
spools every part it reads) only ever sees authenticated, bounded, moving bodies.
"""

from __future__ import annotations

import asyncio

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.auth import authenticate
from service.problems import BODY_CUT, Problem, problem
from service.settings import Settings

WITH_BODY = {"POST", "PUT", "PATCH"}


class BodyGuard:
    """For requests that carry a body:

    - the API key is checked from the headers first (401/403 with the body unread);
    - a declared Content-Length over ``max_upload_bytes`` is refused at once (413);
    - a body that streams past it (chunked, or longer than declared) is cut (413);
    - a body that sends nothing for ``body_timeout_s`` is cut (408): a client that
      declares more than it sends holds no connection open for long.
    """

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.settings = app, settings
        self.limit = settings.max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in WITH_BODY:
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        try:
            authenticate(self.settings, headers.get("x-api-key"), headers.get("authorization"))
        except Problem as e:
            response = problem(scope["path"], e.status_code, str(e.detail), e.headers)
            return await response(scope, receive, send)
        detail = f"the upload is over the {self.limit}-byte limit"
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await problem(scope["path"], 413, detail)(scope, receive, send)
        received, complete = 0, False
        timeout = self.settings.body_timeout_s

        def cut(status: int, reason: str) -> Problem:
            # raised inside the route, so the handlers answer it; the multipart parser
            # turns errors into its own 400, which the flag in the state overrides
            scope.setdefault("state", {})[BODY_CUT] = (status, reason)
            return Problem(status, reason)

        async def guarded() -> Message:
            nonlocal received, complete
            if complete:  # after the body, receive() only waits for the disconnect
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), timeout)
            except TimeoutError:
                raise cut(408, f"the body sent nothing for {timeout:g} s") from None
            received += len(message.get("body", b""))
            complete = not message.get("more_body", False)
            if received > self.limit:
                raise cut(413, detail)
            return message

        await self.app(scope, guarded, send)

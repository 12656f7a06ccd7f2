"""Pure ASGI middleware that refuses oversized requests: headers with 431, bodies with 413.

It runs before FastAPI reads the body, so an oversized payload costs neither memory nor a parse.
The header limit is ours because uvicorn's httptools parser sets none.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodySizeLimitMiddleware:
    def __init__(
        self, app: ASGIApp, limit_for_path: Callable[[str], int], max_header_bytes: int
    ) -> None:
        self.app = app
        self.limit_for_path = limit_for_path
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header_bytes = sum(len(name) + len(value) for name, value in scope["headers"])
        if header_bytes > self.max_header_bytes:
            message = f"request headers exceed the limit of {self.max_header_bytes} bytes"
            await _send_error(send, 431, message)
            return
        limit = self.limit_for_path(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _send_413(send, limit)
            return
        received = 0
        rejected = False

        async def limited_receive() -> Message:
            # Past the limit, answer 413 ourselves and tell the app the client went away:
            # raising here would be turned into a 400 by FastAPI's body parsing.
            nonlocal received, rejected
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit and not rejected:
                    rejected = True
                    await _send_413(send, limit)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not rejected:
                await send(message)

        await self.app(scope, limited_receive, guarded_send)


async def _send_413(send: Send, limit: int) -> None:
    await _send_error(send, 413, f"request body exceeds the limit of {limit} bytes")


async def _send_error(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})

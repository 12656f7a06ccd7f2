"""Pure ASGI middleware that hands a common submit to its route's fast path without routing.

Between this layer and a submit route's fast path, FastAPI runs its exception middleware, its
``AsyncExitStack`` middleware, the router (which tries the routes in order: a submit's is about
the fifteenth, behind the probes, the docs and ``GET /v1/tasks``, and its included router
matches it twice), and ``request_response`` (a ``Request``, two ``AsyncExitStack``\\ s, the
exception wrapper): counted with callgrind, ~0.1 M instructions of a submit, none of which
changes its answer. Here a ``POST`` to a path already served by a submit route
(``FastSubmitRoute``) goes straight to that route's fast path, with the scope entries the router
would have set (``route``, ``endpoint``, ``path_params``: the metrics read the first).

Which route serves a path is learnt from FastAPI's own router, never worked out here: the first
``POST`` to a path goes down the whole stack, and when the router chose a ``FastSubmitRoute``
for it (``scope["route"]``, set by the router), later ``POST``\\ s to the same path come here
first. Routes are fixed once the app serves (none is added at run time), and nothing in this
app routes by ``Host``: the router's choice for a method and a path does not change.

The fast path declines (``HandOver``) every request it does not reproduce byte for byte (a
query string, an ``Idempotency-Key``, a body that fails validation...): it then goes down the
whole stack as before, the body's first message given again, and the route goes straight to
FastAPI's handler. An exception raised after the submit's side effects (429, 503, a payload
nested too deep) is answered by the app's exception handlers exactly as FastAPI's exception
layer would (``wrap_app_handling_exceptions``, the same handlers); any other goes up to
``ServerErrorMiddleware`` as before.
"""

from __future__ import annotations

from typing import Any

from starlette._exception_handler import wrap_app_handling_exceptions
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.fast_submit import DECLINED, FastSubmitRoute, HandOver, replay


class SubmitDispatchMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        # Innermost of the app's middlewares: FastAPI's exception layer is next, and its
        # handler tables are what an error on the fast path is answered with.
        if not isinstance(app, ExceptionMiddleware):
            raise TypeError("SubmitDispatchMiddleware must be added before any other middleware")
        self.app = app
        self._handlers = (app._exception_handlers, app._status_handlers)
        # path -> (route, its fast path), learnt from the router's choices; bounded by the
        # app's own submit routes, since only their paths are kept.
        self._routes: dict[str, tuple[FastSubmitRoute, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        known = self._routes.get(scope["path"])
        if known is None:
            await self.app(scope, receive, send)
            self._learn(scope)
            return
        route, fast = known
        # What the router's match adds to the scope for this route.
        scope["route"] = route
        scope["endpoint"] = route.endpoint
        scope["path_params"] = {}
        request = Request(scope, receive, send)
        try:
            answer = await fast(request)
        except Exception as exc:
            await self._answer_error(request, exc, send)
            return
        if isinstance(answer, HandOver):
            scope[DECLINED] = True
            if answer.first is not None:
                receive = replay(answer.first, receive)
            await self.app(scope, receive, send)
            return
        await answer(scope, receive, send)

    def _learn(self, scope: Scope) -> None:
        route = scope.get("route")
        if (
            isinstance(route, FastSubmitRoute)
            and route.path == scope["path"]
            and route.methods == {"POST"}
            and getattr(route, "max_body_size", None) is None
            and route.fast_path is not None
        ):
            self._routes[scope["path"]] = (route, route.fast_path)

    async def _answer_error(self, request: Request, exc: Exception, send: Send) -> None:
        """``exc`` answered as FastAPI's exception layer answers it: that layer's handlers
        (all but the 500 one, which ``ServerErrorMiddleware`` keeps), Starlette's wrapper."""
        request.scope["starlette.exception_handlers"] = self._handlers

        async def raising(scope: Scope, receive: Receive, send: Send) -> None:
            raise exc

        await wrap_app_handling_exceptions(raising, request)(request.scope, request.receive, send)

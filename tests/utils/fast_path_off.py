"""The API with the submit fast path off, for tests that compare its answers with the fast
path's over real HTTP: ``gunicorn(env, log, app="tests.utils.fast_path_off:create_app()")``.

There is no setting for it, on purpose (the fast path answers as FastAPI would, so no one needs
to turn it off). What turns it off is what the fast path declines on: an overridden dependency
(``app.api.fast_submit``'s ``_is_common``). Overriding ``client_identity`` by itself changes
nothing else, so every submit then goes through FastAPI's routing, dependency solver and
response handling, as it did before the fast path existed.
"""

from __future__ import annotations

from fastapi import FastAPI

from app.api.security import client_identity
from app.main import create_app as create_courier_app


def create_app() -> FastAPI:
    app = create_courier_app()
    app.dependency_overrides[client_identity] = client_identity
    return app

"""The API's ASGI layers, outermost first: the tracing switch (``tracing``: a request goes to
the instrumented or the plain stack by the sampler's verdict, ``worker/core/tracing/asgi.py``),
metrics (``metrics``: RED metrics per route template, counted also for 413s and errors), the
body size limit (``body_limit``: 413 before a body is read), and the submit dispatch
(``submit_dispatch``: a common submit handed to its route's fast path without routing).
Pure ASGI, no Starlette ``BaseHTTPMiddleware``: each adds nothing to a request but its own
work."""

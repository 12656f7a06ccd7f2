"""Code shared by the API and the worker: settings, names, stores, status.

It lives under ``worker/`` so that imports run one way (``app -> worker -> worker.core``)
inside the fixed top-level layout, and the worker image carries everything it needs.
"""

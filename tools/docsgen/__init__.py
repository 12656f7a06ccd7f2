"""The docs' reference tables, generated from the code that defines what they describe.

A hand-kept table drifts (the README's did); a generated one cannot, because
`tests/docs/test_generated.py` fails when a file differs from what these generators produce now.
`make docs-gen` (``python -m tools.docsgen``) rewrites them all. A table inside a hand-written
page sits between two markers (``regions.py``); the chart's own README is generated whole.
"""

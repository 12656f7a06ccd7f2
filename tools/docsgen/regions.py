"""Generated regions inside hand-written Markdown pages.

Prose stays hand-written and reads on GitHub as it does on the site; only what lies between
``<!-- generated:NAME -->`` and ``<!-- end generated:NAME -->`` belongs to a generator.
"""

from __future__ import annotations


class MissingRegionError(ValueError):
    """A page lost its markers: the generator would otherwise have nowhere to write."""


def begin_marker(name: str) -> str:
    return (
        f"<!-- generated:{name} by `make docs-gen` (tools/docsgen): edit the source, not this -->"
    )


def end_marker(name: str) -> str:
    return f"<!-- end generated:{name} -->"


def replace_region(text: str, name: str, body: str) -> str:
    """``text`` with the region ``name`` holding ``body`` (markers kept, one blank line inside)."""
    begin, end = begin_marker(name), end_marker(name)
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        raise MissingRegionError(f"no {begin!r} ... {end!r} pair")
    return text[: start + len(begin)] + "\n\n" + body.strip("\n") + "\n\n" + text[stop:]

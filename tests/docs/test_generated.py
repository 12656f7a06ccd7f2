"""Generated reference tables cannot go stale unnoticed: each file must equal what its generator
(tools/docsgen) produces from the code now. Fix a failure with `make docs-gen`."""

from __future__ import annotations

import pytest

from tools.docsgen.regions import MissingRegionError, begin_marker, end_marker, replace_region
from tools.docsgen.targets import TARGETS, Target


@pytest.mark.parametrize("target", TARGETS, ids=lambda target: target.path)
def test_generated_file_is_current(target: Target) -> None:
    assert target.current() == target.expected(), f"{target.path} is stale: run `make docs-gen`"


def test_a_region_is_replaced_between_its_markers_and_nothing_else() -> None:
    page = f"intro\n{begin_marker('t')}\nold\n{end_marker('t')}\noutro\n"
    assert replace_region(page, "t", "new") == (
        f"intro\n{begin_marker('t')}\n\nnew\n\n{end_marker('t')}\noutro\n"
    )


def test_a_page_without_its_markers_is_an_error() -> None:
    with pytest.raises(MissingRegionError):
        replace_region("no markers here\n", "t", "new")

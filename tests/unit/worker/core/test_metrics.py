"""``worker.core.metrics.labelled``: the child ``labels`` gives, found without ``labels``'s work."""

from __future__ import annotations

import pytest
from prometheus_client import Counter, Histogram

from worker.core import metrics


def _counter() -> Counter:
    return Counter("courier_test_labelled", "A counter of this test only.", ("name", "queue"),
                   registry=None)  # fmt: skip


def test_labelled_is_the_child_labels_gives() -> None:
    counter = _counter()
    child = metrics.labelled(counter, "noop", "celery")
    assert child is counter.labels("noop", "celery")
    assert metrics.labelled(counter, "noop", "celery") is child
    child.inc()
    assert counter.labels("noop", "celery")._value.get() == 1


def test_other_values_or_metrics_get_their_own_child() -> None:
    counter, other = _counter(), _counter()
    one = metrics.labelled(counter, "noop", "celery")
    assert metrics.labelled(counter, "noop", "other") is not one
    assert metrics.labelled(other, "noop", "celery") is other.labels("noop", "celery")
    histogram = Histogram("courier_test_h", "h", ("name",), registry=None, buckets=(1.0,))
    metrics.labelled(histogram, "noop").observe(0.5)
    assert histogram.labels("noop")._sum.get() == 0.5


def test_past_the_bound_children_are_still_right_but_not_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(metrics, "_CHILDREN", {})
    monkeypatch.setattr(metrics, "_CHILDREN_KEPT", 1)
    counter = _counter()
    metrics.labelled(counter, "a", "q")
    assert metrics.labelled(counter, "b", "q") is counter.labels("b", "q")
    assert len(metrics._CHILDREN) == 1

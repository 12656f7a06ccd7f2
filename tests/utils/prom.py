"""Reading Prometheus text exposition in tests."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a /metrics page, keyed by (sample name, labels)."""
    text = httpx.get(url, timeout=5).text
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def total(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], metric: str, /, **labels: str
) -> float:
    """Sum of the samples named ``metric`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == metric and wanted <= ls)


def label_values(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, label: str
) -> set[str]:
    return {dict(ls)[label] for (n, ls) in samples if n == name and label in dict(ls)}

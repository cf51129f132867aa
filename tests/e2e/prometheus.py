"""Reading Ray's Prometheus endpoint in tests."""

from __future__ import annotations

from collections import defaultdict

import httpx
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(url: str) -> Samples:
    """Every sample on the endpoint: sample name → [(labels, value)]."""
    samples: Samples = defaultdict(list)
    for family in text_string_to_metric_families(httpx.get(url, timeout=30).text):
        for sample in family.samples:
            samples[sample.name].append((sample.labels, sample.value))
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of `name` over every series (replicas, deployments) whose labels include `labels`."""
    return sum(value for got, value in samples.get(name, []) if labels.items() <= got.items())

"""Scrape a service's /metrics, checking that every series names its service and model."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple], float]


def scrape_service(url: str, service: str, model_name: str) -> Samples:
    """Samples at `url` keyed by (name, sorted labels) without `service`/`model_name`, after asserting
    every sample carries exactly those two."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = dict(sample.labels)
            assert labels.pop("service", None) == service, sample
            assert labels.pop("model_name", None) == model_name, sample
            samples[(sample.name, tuple(sorted(labels.items())))] = sample.value
    return samples

"""Fixtures for telemetry tests: an OTLP collector and this process's tracing pointed at it."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from infermesh_shared.telemetry import init_tracing, shutdown_tracing

from tests.telemetry.otlp_collector import OtlpCollector


@pytest.fixture
def otlp_collector() -> Iterator[OtlpCollector]:
    collector = OtlpCollector()
    try:
        yield collector
    finally:
        collector.stop()


@pytest.fixture
def traced_process(otlp_collector: OtlpCollector) -> Iterator[OtlpCollector]:
    """Tracing of the test process itself exports to a fresh collector; off again afterwards."""
    init_tracing("telemetry-test", "otlp_grpc", otlp_collector.endpoint, 1.0)
    try:
        yield otlp_collector
    finally:
        shutdown_tracing()


@pytest.fixture
def restore_root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(level)

"""Fixtures for routing and discovery tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.routing.redis_server import running_redis_server


@pytest.fixture
def redis_url(tmp_path) -> Iterator[str]:
    """URL of a fresh redis-server that lives for one test."""
    with running_redis_server(tmp_path / "redis") as url:
        yield url

"""Prometheus /metrics over HTTP, one registry per service instance."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

from infermesh_shared.telemetry.service_registry import ServiceRegistry


def create_registry(service: str, model_name: str = "") -> ServiceRegistry:
    """A fresh registry with the process, platform and GC collectors, its series labelled
    `service` (frontend, scheduler, worker) and `model_name`.

    Each service builds its metrics in its own registry instead of prometheus_client's global
    one, so a test process can hold several services' metrics without name clashes.
    """
    registry = ServiceRegistry(service, model_name)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


@dataclass(slots=True)
class MetricsServer:
    """A running /metrics endpoint."""

    host: str
    port: int
    _httpd: WSGIServer
    _thread: threading.Thread

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def start_metrics_server(port: int, registry: ServiceRegistry, host: str = "127.0.0.1") -> MetricsServer:
    """Serves `registry` at http://host:port/metrics from a daemon thread.

    `port=0` binds a free port (read it from the result's `.port`); the config option
    `metrics_port: 0` means "no metrics server", so services do not call this then.
    Raises OSError when the port is taken.
    """
    if not 0 <= port <= 65535:
        raise ValueError(f"metrics port must be within 0..65535, got {port}")
    httpd, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsServer(host=host, port=httpd.server_port, _httpd=httpd, _thread=thread)

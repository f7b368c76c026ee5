"""Translates the seed's ZeroMQ-style worker_endpoint into a gRPC listen address."""

from __future__ import annotations


class WorkerEndpointError(ValueError):
    """worker_endpoint is not ipc://PATH or tcp://HOST:PORT."""


def listen_address(endpoint: str) -> str:
    """The gRPC address to bind for `endpoint`: ipc:///p -> unix:/p, tcp://h:p -> h:p (* -> 0.0.0.0)."""
    if endpoint.startswith("ipc://"):
        path = endpoint[len("ipc://") :]
        if not path.startswith("/"):
            raise WorkerEndpointError(f"worker_endpoint {endpoint!r}: an ipc endpoint needs an absolute path")
        return f"unix:{path}"
    if endpoint.startswith("tcp://"):
        host, sep, port = endpoint[len("tcp://") :].rpartition(":")
        if not sep or not host or not port.isdigit():
            raise WorkerEndpointError(
                f"worker_endpoint {endpoint!r}: expected tcp://HOST:PORT, e.g. tcp://*:5555"
            )
        return f"{'0.0.0.0' if host == '*' else host}:{port}"
    raise WorkerEndpointError(
        f"worker_endpoint {endpoint!r}: expected ipc:///path or tcp://HOST:PORT (e.g. tcp://*:5555)"
    )

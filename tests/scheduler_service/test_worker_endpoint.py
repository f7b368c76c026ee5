"""worker_endpoint (seed 000's ZeroMQ syntax) -> gRPC listen address."""

from __future__ import annotations

import pytest
from infermesh_scheduler.worker_endpoint import WorkerEndpointError, listen_address
from infermesh_scheduler.worker_handle import rendezvous_host


@pytest.mark.parametrize(
    ("endpoint", "address"),
    [
        ("ipc:///tmp/s.ipc", "unix:/tmp/s.ipc"),
        ("tcp://*:5555", "0.0.0.0:5555"),
        ("tcp://10.0.0.2:7000", "10.0.0.2:7000"),
    ],
)
def test_listen_address(endpoint, address):
    assert listen_address(endpoint) == address


@pytest.mark.parametrize("endpoint", ["zmq://x", "tcp://host", "ipc://relative"])
def test_bad_endpoint_says_what_is_expected(endpoint):
    with pytest.raises(WorkerEndpointError, match="expected|absolute"):
        listen_address(endpoint)


@pytest.mark.parametrize(
    ("address", "host"),
    [
        ("10.1.2.3:50051", "10.1.2.3"),
        ("[::1]:7000", "::1"),
        ("unix:/tmp/w.sock", "127.0.0.1"),
        ("node7:9", "node7"),
    ],
)
def test_rendezvous_host(address, host):
    assert rendezvous_host(address) == host

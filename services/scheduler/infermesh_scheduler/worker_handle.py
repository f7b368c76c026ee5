"""One registered worker process and the channel to it; the addresses a group forms over."""

from __future__ import annotations

import socket
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2_grpc
from infermesh.v1 import worker_pb2_grpc
from infermesh_shared.grpc_transport import TlsFiles, open_aio_channel
from infermesh_shared.peer_roles import WORKER
from infermesh_shared.telemetry import aio_client_interceptors

_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 256 * 1024 * 1024),
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    # gRPC shares one connection (subchannel) per address among channels by default. A worker that
    # restarts on its old address would then inherit the dead connection's "connection refused"
    # back-off and be dropped right after registering; its own pool gives it a fresh connection.
    ("grpc.use_local_subchannel_pool", 1),
]


@dataclass(slots=True)
class WorkerHandle:
    """One registered worker process and the channel to it."""

    worker_id: str
    name: str
    address: str
    device: str
    channel: grpc.aio.Channel
    stub: worker_pb2_grpc.WorkerServiceStub
    health: health_pb2_grpc.HealthStub
    loaded: bool = False  # LoadModel succeeded at least once (Reset is needed before re-forming)

    @classmethod
    def connect(cls, worker_id: str, name: str, address: str, device: str, tls: TlsFiles) -> WorkerHandle:
        """A handle with a fresh channel to the worker at `address` (as the scheduler, to a worker)."""
        channel = open_aio_channel(
            address, tls, server_role=WORKER, options=_CHANNEL_OPTIONS, interceptors=aio_client_interceptors()
        )
        return cls(
            worker_id=worker_id,
            name=name,
            address=address,
            device=device,
            channel=channel,
            stub=worker_pb2_grpc.WorkerServiceStub(channel),
            health=health_pb2_grpc.HealthStub(channel),
        )


def rendezvous_host(address: str) -> str:
    """The host part of a worker's gRPC address, for the torch.distributed rendezvous."""
    if address.startswith("unix:") or address.startswith("unix-abstract:"):
        return "127.0.0.1"
    address = address.removeprefix("dns:///").removeprefix("ipv4:").removeprefix("ipv6:")
    host = address.rpartition(":")[0] or address
    return host.strip("[]") or "127.0.0.1"


def free_tcp_port() -> int:
    """A TCP port free on this machine now (for the rendezvous of a new process group)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]

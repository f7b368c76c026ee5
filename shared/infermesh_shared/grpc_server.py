"""Common gRPC server plumbing: health checking and reflection for every service."""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from infermesh_shared.grpc_transport import aio_server, bind, sync_server

# A health check request is a service name: a few hundred bytes.
_HEALTH_MAX_RECEIVE_BYTES = 16 * 1024


def add_health_and_reflection(
    server: grpc.Server | grpc.aio.Server, service_full_names: Iterable[str], reflection_on: bool = False
) -> health.HealthServicer:
    """Registers grpc.health.v1 (and server reflection when `reflection_on`, the
    enable_reflection option: off by default, it lists every RPC to whoever asks) on `server`;
    returns the health servicer.

    The caller flips statuses with `set(name, status)`; the overall status ("") starts SERVING
    only when the caller says so, because a service whose downstream is missing is not ready.
    """
    names = list(service_full_names)
    servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    for name in ["", *names]:
        servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    if reflection_on:
        reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    return servicer


def set_serving(servicer: health.HealthServicer, service_full_names: Iterable[str], serving: bool) -> None:
    """Sets the overall status and each named service's status to SERVING or NOT_SERVING."""
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ["", *service_full_names]:
        servicer.set(name, status)


def health_only_server(
    servicer: health.HealthServicer, address: str, *, aio: bool
) -> grpc.Server | grpc.aio.Server:
    """A plaintext server on `address` answering grpc.health.v1 from `servicer`, nothing else.

    For probes that cannot present a client certificate (kubelet); the caller starts and stops it.
    """
    if aio:
        server = aio_server(_HEALTH_MAX_RECEIVE_BYTES)
    else:
        server = sync_server(ThreadPoolExecutor(max_workers=2), _HEALTH_MAX_RECEIVE_BYTES)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    bind(server, address, what="health_port")
    return server

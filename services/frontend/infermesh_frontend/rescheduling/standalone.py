"""infermesh-rescheduler: the standalone rescheduler (seed 001's standalone_rescheduling_mode).

It finds the scheduler replicas by the frontend's discovery options, runs the rescheduling loop
while its lease (rescheduling_lease_redis_url) makes it the active one, and serves gRPC health
and ReschedulerService (drain, migrate) on its own port: mutual TLS with role checks when its
certificate is given, refusing plaintext off loopback like every other service.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from infermesh.v1 import rescheduler_pb2, rescheduler_pb2_grpc
from infermesh_shared.config import ReschedulerConfig, load_config
from infermesh_shared.discovery import make_discovery
from infermesh_shared.grpc_server import add_health_and_reflection, set_serving
from infermesh_shared.grpc_transport import (
    EXIT_PORT_IN_USE,
    PortInUseError,
    TlsConfigError,
    aio_server,
    bind,
    internal_tls,
)
from infermesh_shared.peer_roles import AioRoleInterceptor
from infermesh_shared.telemetry.metrics_server import create_registry, start_metrics_server
from infermesh_shared.telemetry.structured_logging import configure_service_logging

from infermesh_frontend.rescheduling.lease import make_lease
from infermesh_frontend.rescheduling.operator_service import ReschedulerServicer
from infermesh_frontend.rescheduling.replica_channels import ReplicaChannels
from infermesh_frontend.rescheduling.rescheduler import Rescheduler, ReschedulerMetrics

logger = logging.getLogger("infermesh_rescheduler")

SERVICE_NAME = rescheduler_pb2.DESCRIPTOR.services_by_name["ReschedulerService"].full_name
EXIT_BAD_CONFIG = 2
# Operator calls are small.
MAX_RECEIVE_BYTES = 1024 * 1024


async def serve(cfg: ReschedulerConfig, stop: asyncio.Event | None = None) -> None:
    tls = internal_tls(cfg, "the rescheduler")
    discovery = make_discovery(
        cfg.discovery,
        scheduler_addresses=list(cfg.scheduler_addresses),
        dns_name=cfg.dns_name,
        redis_url=cfg.redis_url,
    )
    replicas = ReplicaChannels(discovery, tls, cfg.discovery_interval_ms / 1000)
    registry = create_registry("rescheduler")
    server = aio_server(MAX_RECEIVE_BYTES, interceptors=[AioRoleInterceptor()] if tls.enabled else [])
    rescheduler_pb2_grpc.add_ReschedulerServiceServicer_to_server(
        ReschedulerServicer(replicas.stubs, cfg.rescheduling_config), server
    )
    health = add_health_and_reflection(server, [SERVICE_NAME], reflection_on=False)
    port = bind(server, f"{cfg.host}:{cfg.port}", tls)
    await server.start()
    metrics_server = start_metrics_server(cfg.metrics_port, registry, cfg.host) if cfg.metrics_port else None
    await replicas.start()
    rescheduler = Rescheduler(
        cfg.rescheduling_config,
        replicas.stubs,
        make_lease(cfg.rescheduling_config),
        ReschedulerMetrics(registry),
    )
    await rescheduler.start()
    # Serving means running: whether it acts is the lease's business (a standby is healthy too).
    set_serving(health, [SERVICE_NAME], True)
    # The launcher and the tests parse this line to learn the bound port.
    print(f"rescheduler listening on {cfg.host}:{port}", flush=True)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        logger.info("rescheduler shutting down")
        set_serving(health, [SERVICE_NAME], False)
        await rescheduler.stop()  # gives the lease back: a standby takes over at once
        await server.stop(1.0)
        await replicas.close()
        if metrics_server is not None:
            metrics_server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the infermesh-rescheduler console script."""
    cfg = load_config("rescheduler", list(sys.argv[1:] if argv is None else argv))
    configure_service_logging(cfg)
    try:
        asyncio.run(serve(cfg))
    except PortInUseError as error:
        sys.stderr.write(f"Error: {error}\n")
        return EXIT_PORT_IN_USE
    except (TlsConfigError, ValueError) as error:
        sys.stderr.write(f"Error: Configuration validation failed\n  Caused by: {error}\n")
        return EXIT_BAD_CONFIG
    return 0


if __name__ == "__main__":
    sys.exit(main())

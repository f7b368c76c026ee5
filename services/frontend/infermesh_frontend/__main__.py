"""infermesh-frontend: serve FrontendService until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from infermesh_shared.config import FrontendConfig, load_config
from infermesh_shared.grpc_transport import EXIT_PORT_IN_USE, PortInUseError, TlsConfigError
from infermesh_shared.telemetry.genai_metrics import start_genai_metrics, stop_genai_metrics
from infermesh_shared.telemetry.grpc_aio_interceptors import aio_client_interceptors, aio_server_interceptors
from infermesh_shared.telemetry.structured_logging import configure_service_logging
from infermesh_shared.telemetry.tracing import init_tracing, shutdown_tracing

from infermesh_frontend.client_auth import ApiKeyConfigError
from infermesh_frontend.server import FrontendServer
from infermesh_frontend.tokenizer import TokenizerLoadError

logger = logging.getLogger("infermesh_frontend")

EXIT_BAD_CONFIG = 2


async def _serve(cfg: FrontendConfig) -> None:
    server = FrontendServer(
        cfg, client_interceptors=aio_client_interceptors(), server_interceptors=aio_server_interceptors()
    )
    port = await server.start()
    print(f"frontend listening on {cfg.host}:{port}", flush=True)
    if server.http_server is not None:
        print(f"frontend http listening on {cfg.host}:{server.http_server.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        logger.info("frontend shutting down")
        try:
            await server.drain(cfg.drain_timeout_s)
        finally:
            await server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the infermesh-frontend console script."""
    cfg = load_config("frontend", list(sys.argv[1:] if argv is None else argv))
    configure_service_logging(cfg)
    init_tracing(
        cfg.service_name,
        exporter=cfg.tracing_exporter,
        endpoint=cfg.otlp_endpoint,
        sample_ratio=cfg.tracing_sample_ratio,
    )
    start_genai_metrics(cfg.service_name, cfg.tracing_exporter, cfg.otlp_endpoint)
    try:
        asyncio.run(_serve(cfg))
    except PortInUseError as error:
        sys.stderr.write(f"Error: {error}\n")
        return EXIT_PORT_IN_USE
    except (TlsConfigError, ApiKeyConfigError, TokenizerLoadError) as error:
        sys.stderr.write(f"Error: Configuration validation failed\n  Caused by: {error}\n")
        return EXIT_BAD_CONFIG
    finally:
        stop_genai_metrics()
        shutdown_tracing()
    return 0


if __name__ == "__main__":
    sys.exit(main())

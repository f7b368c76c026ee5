"""`infermesh-scheduler`: reads the config and the model metadata, then serves until stopped."""

from __future__ import annotations

import asyncio
import logging
import sys

from infermesh_shared.config import load_config
from infermesh_shared.config.model_metadata import ModelMetadataError, read_model_metadata
from infermesh_shared.grpc_transport import EXIT_PORT_IN_USE, PortInUseError
from infermesh_shared.telemetry import configure_service_logging, init_tracing, shutdown_tracing

from infermesh_scheduler.gc_policy import settle_after_startup
from infermesh_scheduler.server import StartupError, serve

logger = logging.getLogger("infermesh_scheduler")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit status."""
    cfg = load_config("scheduler", sys.argv[1:] if argv is None else argv)
    configure_service_logging(cfg)
    for note in cfg.notes:
        logger.info("config: %s", note)
    try:
        metadata = cfg.model_metadata or read_model_metadata(cfg.model_path, cfg.custom_config)
    except ModelMetadataError as err:
        print(f"Error: Model metadata read failed\n  Caused by: {err}", file=sys.stderr)
        return 2
    init_tracing(cfg.service_name, cfg.tracing_exporter, cfg.otlp_endpoint, cfg.tracing_sample_ratio)
    settle_after_startup()
    try:
        asyncio.run(serve(cfg, metadata))
    except PortInUseError as err:
        print(f"Error: {err}", file=sys.stderr)
        return EXIT_PORT_IN_USE
    except StartupError as err:
        print(f"Error: scheduler cannot start\n  Caused by: {err}", file=sys.stderr)
        return 2
    finally:
        shutdown_tracing()
    return 0


if __name__ == "__main__":
    sys.exit(main())

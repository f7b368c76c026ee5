"""Assembles the scheduler service: gRPC server, worker group, engine loop, health."""

from __future__ import annotations

import asyncio
import logging
import signal
from concurrent.futures import ThreadPoolExecutor

from infermesh.v1 import scheduler_pb2, scheduler_pb2_grpc
from infermesh_shared.config import SchedulerConfig
from infermesh_shared.config.kv_sizing import resolve_dtype
from infermesh_shared.config.model_metadata import ModelMetadata
from infermesh_shared.discovery.advertised_address import advertised_address
from infermesh_shared.grpc_server import add_health_and_reflection, health_only_server
from infermesh_shared.grpc_transport import (
    TlsConfigError,
    aio_server,
    bind,
    internal_tls,
    require_tls_off_loopback,
)
from infermesh_shared.peer_roles import AioRoleInterceptor
from infermesh_shared.telemetry import (
    CacheConfig,
    aio_server_interceptors,
    create_registry,
    start_metrics_server,
)

from infermesh_scheduler.core.config import SchedulerCoreConfig
from infermesh_scheduler.core.request_check import RequestLimits
from infermesh_scheduler.core.scheduler import Scheduler
from infermesh_scheduler.engine_loop import EngineLoop
from infermesh_scheduler.migration_rpcs import MigrationService
from infermesh_scheduler.model_info import build_model_info, model_name
from infermesh_scheduler.request_telemetry import build_scheduler_telemetry
from infermesh_scheduler.servicer import SchedulerServicer
from infermesh_scheduler.serving_health import ServingHealth
from infermesh_scheduler.worker_endpoint import WorkerEndpointError, listen_address
from infermesh_scheduler.worker_group import WorkerGroup

logger = logging.getLogger(__name__)

SERVICE_NAME = scheduler_pb2.DESCRIPTOR.services_by_name["SchedulerService"].full_name
_SHUTDOWN_GRACE_S = 2.0
# The largest message a scheduler receives is a Submit with a max_model_len prompt.
_MAX_RECEIVE_BYTES = 64 * 1024 * 1024


class StartupError(Exception):
    """The service cannot start as configured; the message says what to change."""


async def serve(cfg: SchedulerConfig, metadata: ModelMetadata, stop: asyncio.Event | None = None) -> None:
    """Runs the scheduler until SIGTERM/SIGINT (or `stop` is set); cfg as load_config validated it."""
    max_model_len = cfg.max_model_len
    try:
        tls = internal_tls(cfg, "the scheduler")
        if cfg.worker_endpoint and not tls.enabled:
            worker_host = listen_address(cfg.worker_endpoint).rpartition(":")[0]
            if not worker_host.startswith("unix"):
                require_tls_off_loopback(worker_host, tls, cfg.insecure_plaintext, "the worker endpoint")
    except (TlsConfigError, WorkerEndpointError) as err:
        raise StartupError(str(err)) from None

    def build_scheduler(num_blocks: int, num_cpu_blocks: int) -> Scheduler:
        return Scheduler(SchedulerCoreConfig.from_config(cfg, num_blocks, num_cpu_blocks))

    def check_pool(num_blocks: int) -> str:
        # Options that depend on the pool size (preemption_threshold, ...) can only be judged once
        # the workers said how many blocks they hold.
        try:
            cpu_blocks = (cfg.num_cpu_blocks or num_blocks) if cfg.enable_swap else 0
            SchedulerCoreConfig.from_config(cfg, num_blocks, cpu_blocks)
        except ValueError as err:
            return f"a pool of {num_blocks} KV blocks cannot serve this configuration: {err}"
        return ""

    group = WorkerGroup(
        cfg,
        tls,
        on_state=lambda event: engine.on_group_state(event),
        check_pool=check_pool,
    )
    server = aio_server(
        _MAX_RECEIVE_BYTES,
        interceptors=[*aio_server_interceptors(), *([AioRoleInterceptor()] if tls.enabled else [])],
        migration_thread_pool=ThreadPoolExecutor(max_workers=2, thread_name_prefix="grpc-health"),
    )
    health_servicer = add_health_and_reflection(server, [SERVICE_NAME], reflection_on=cfg.enable_reflection)
    registry = create_registry("scheduler", model_name(cfg.model_path)) if cfg.metrics_port else None
    cache_config = CacheConfig(cfg.block_size, cfg.dtype, cfg.enable_prefix_cache, cfg.enable_swap)
    telemetry = build_scheduler_telemetry(
        registry, lambda: engine.scheduler, cache_config, model_name(cfg.model_path)
    )

    def num_waiting() -> int:
        scheduler = engine.scheduler
        return 0 if scheduler is None else scheduler.load().num_waiting

    health = ServingHealth(
        # A draining replica reports NOT_SERVING so the frontends route new work elsewhere.
        health_servicer,
        [SERVICE_NAME],
        cfg.max_queue_size,
        lambda: group.is_ready and not engine.draining,
        num_waiting,
    )
    engine = EngineLoop(
        cfg,
        group,
        build_scheduler,
        on_load_change=health.refresh,
        telemetry=telemetry,
    )
    model_info = build_model_info(
        cfg.model_path,
        metadata,
        max_model_len,
        cfg.block_size,
        cfg.total_blocks,
        cfg.tp_size,
        cfg.pp_size,
        resolve_dtype(cfg.dtype, metadata.torch_dtype),  # until the workers say what they loaded
    )
    scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(
        SchedulerServicer(
            engine,
            group,
            health,
            RequestLimits(metadata.vocab_size, max_model_len, cfg.enable_cow),
            cfg.default_priority,
            model_info,
            telemetry,
            MigrationService(
                engine, group, tls, cfg.default_priority, cfg.worker_timeout_ms / 1000, telemetry
            ),
        ),
        server,
    )
    port = bind(server, f"{cfg.host}:{cfg.port}", tls)
    if cfg.worker_endpoint:
        try:
            worker_address = listen_address(cfg.worker_endpoint)
        except WorkerEndpointError as err:
            raise StartupError(str(err)) from None
        bind(server, worker_address, tls, what=f"worker_endpoint {cfg.worker_endpoint}")
        logger.info("workers may also register on %s", worker_address)
    health_server = None
    if cfg.health_port:
        health_server = health_only_server(health_servicer, f"{cfg.host}:{cfg.health_port}", aio=True)
    metrics_server = None
    if registry is not None:
        try:
            metrics_server = start_metrics_server(cfg.metrics_port, registry, cfg.host)
        except OSError as err:
            raise StartupError(f"cannot serve /metrics on {cfg.host}:{cfg.metrics_port}: {err}") from None
        logger.info("metrics at %s", metrics_server.url)
    await server.start()
    if health_server is not None:
        await health_server.start()
    group.start()
    engine.start()
    registration = None
    if cfg.redis_url:
        # Here, not at the top: the Redis client costs every scheduler start ~0.1 s.
        from infermesh_shared.discovery.redis_registration import RedisRegistration

        registration = RedisRegistration(
            cfg.redis_url,
            advertised_address(cfg.advertise_address, cfg.host, port),
            ttl_s=cfg.redis_ttl_ms / 1000.0,
        )
        try:
            await asyncio.to_thread(registration.start)
        except Exception as err:
            await engine.stop()
            await server.stop(0)
            await group.stop()
            raise StartupError(f"cannot register in Redis at {cfg.redis_url}: {err}") from None
    # The launcher and the tests parse this exact line to learn the bound port.
    print(f"scheduler listening on {cfg.host}:{port}", flush=True)
    logger.info(
        "scheduler listening on %s:%d: model %s (%s, vocab %d, max_model_len %d), waiting for %d worker(s) "
        "(tp_size=%d pp_size=%d)",
        cfg.host,
        port,
        model_info.model_name,
        metadata.architecture,
        metadata.vocab_size,
        max_model_len,
        cfg.tp_size * cfg.pp_size,
        cfg.tp_size,
        cfg.pp_size,
    )
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        logger.info("scheduler shutting down")
        if registration is not None:
            await asyncio.to_thread(registration.stop)
        await engine.drain(cfg.drain_timeout_s)
        await engine.stop()
        await server.stop(_SHUTDOWN_GRACE_S)
        if health_server is not None:
            await health_server.stop(0)
        await group.stop()
        if metrics_server is not None:
            metrics_server.stop()

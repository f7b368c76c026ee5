"""The worker process: gRPC server, registration with the scheduler, clean shutdown."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from concurrent import futures

import torch
from infermesh.v1 import worker_pb2, worker_pb2_grpc
from infermesh_shared.config import WorkerConfig
from infermesh_shared.discovery.advertised_address import advertised_address
from infermesh_shared.grpc_server import add_health_and_reflection, health_only_server, set_serving
from infermesh_shared.grpc_transport import (
    EXIT_PORT_IN_USE,
    PortInUseError,
    TlsConfigError,
    bind,
    internal_tls,
    open_channel,
    sync_server,
)
from infermesh_shared.peer_roles import SCHEDULER, SyncRoleInterceptor
from infermesh_shared.telemetry import (
    WorkerMetrics,
    configure_service_logging,
    create_registry,
    init_tracing,
    shutdown_tracing,
    start_metrics_server,
    sync_server_interceptors,
    traced_channel,
)

from infermesh_worker.model_runner import ModelRunner
from infermesh_worker.registration import RegistrationTimeout, SchedulerWatch, register_with_scheduler
from infermesh_worker.scheduler_pin import PinnedSchedulerInterceptor, SchedulerPin, scheduler_fingerprint
from infermesh_worker.servicer import WorkerServicer

logger = logging.getLogger(__name__)

SERVICE_NAME = worker_pb2.DESCRIPTOR.services_by_name["WorkerService"].full_name
MAX_MESSAGE_BYTES = 256 * 1024 * 1024


def resolve_device(name: str) -> torch.device:
    """auto -> cuda:0 when CUDA is available, else cpu; refuses CUDA on a machine without it."""
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available; use --device cpu")
        device = torch.device("cuda:0" if name == "cuda" else name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {name!r} does not exist; this machine has {torch.cuda.device_count()} GPUs"
            )
        return device
    return torch.device("cpu")


def run(cfg: WorkerConfig) -> int:
    """Serves until SIGTERM/SIGINT; returns the process exit code."""
    configure_service_logging(cfg)
    try:
        device = resolve_device(cfg.device)
    except ValueError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    if device.type == "cpu" and cfg.kv_cache_memory_bytes == 0:
        print(
            "Error: kv_cache_memory_bytes = 0 on CPU leaves no room for a KV cache; give a budget in bytes",
            file=sys.stderr,
        )
        return 2
    try:
        tls = internal_tls(cfg, "the worker")
    except TlsConfigError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    init_tracing(cfg.service_name, cfg.tracing_exporter, cfg.otlp_endpoint, cfg.tracing_sample_ratio)
    metrics = None
    metrics_server = None
    if cfg.metrics_port > 0:
        registry = create_registry("worker")
        metrics = WorkerMetrics(registry)
        metrics_server = start_metrics_server(cfg.metrics_port, registry, cfg.host)

    runner = ModelRunner(
        device, kv_cache_memory_bytes=cfg.kv_cache_memory_bytes, dist_timeout_s=cfg.dist_timeout_ms / 1000.0
    )
    servicer = WorkerServicer(runner, metrics, peer_tls=tls)
    pin = SchedulerPin()
    server = sync_server(
        futures.ThreadPoolExecutor(max_workers=8),
        MAX_MESSAGE_BYTES,
        interceptors=[
            *([SyncRoleInterceptor(), PinnedSchedulerInterceptor(pin)] if tls.enabled else []),
            *sync_server_interceptors(),
        ],
        options=[("grpc.max_send_message_length", MAX_MESSAGE_BYTES)],
    )
    worker_pb2_grpc.add_WorkerServiceServicer_to_server(servicer, server)
    health = add_health_and_reflection(server, [SERVICE_NAME], reflection_on=cfg.enable_reflection)
    try:
        port = bind(server, f"{cfg.host}:{cfg.port}", tls)
    except PortInUseError as exc:
        print(f"Error: {exc}", file=sys.stderr, flush=True)
        servicer.close()
        if metrics_server is not None:
            metrics_server.stop()
        return EXIT_PORT_IN_USE
    health_server = None
    if cfg.health_port:
        try:
            health_server = health_only_server(health, f"{cfg.host}:{cfg.health_port}", aio=False)
        except PortInUseError as exc:
            print(f"Error: {exc}", file=sys.stderr, flush=True)
            servicer.close()
            return EXIT_PORT_IN_USE
        health_server.start()
    server.start()
    set_serving(health, [SERVICE_NAME], True)
    # The same rule as the scheduler's: a wildcard bind advertises this machine's address.
    address = advertised_address("", cfg.host, port)
    print(f"worker listening on {cfg.host}:{port}", flush=True)

    stop = threading.Event()

    def request_stop(signum, _frame) -> None:
        logger.info("signal %d: shutting down", signum)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    # gRPC's reconnect back-off grows to minutes; a restarted scheduler must hear from us in about
    # a probe interval, so the dial is retried at least every second.
    channel = traced_channel(
        open_channel(
            cfg.scheduler_address,
            tls,
            server_role=SCHEDULER,
            options=[("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 1000)],
        )
    )

    interval_s = cfg.scheduler_probe_interval_ms / 1000.0
    watch = SchedulerWatch(channel, address, timeout_s=max(interval_s, 1.0))

    def register() -> None:
        watch.worker_id = register_with_scheduler(
            channel,
            cfg.scheduler_address,
            address,
            str(device),
            cfg.worker_name or address,
            cfg.register_timeout_ms / 1000.0,
            stop_requested=stop.is_set,
            before_register=(
                (lambda: pin.set(scheduler_fingerprint(cfg.scheduler_address, tls)))
                if tls.enabled
                else (lambda: None)
            ),
        )

    exit_code = 0
    try:
        register()
    except RegistrationTimeout as exc:
        print(f"Error: {exc}", file=sys.stderr, flush=True)
        exit_code = 1
        stop.set()
    while not stop.wait(interval_s if interval_s > 0 else None):
        if watch.probe():
            try:
                register()
            except RegistrationTimeout as exc:
                logger.error("registering again failed: %s", exc)
    set_serving(health, [SERVICE_NAME], False)
    # New steps are refused from here; the step running finishes and is answered (drain).
    server.stop(grace=cfg.drain_timeout_s).wait()
    if health_server is not None:
        health_server.stop(0)
    torch_thread_done = servicer.close()
    channel.close()
    if metrics_server is not None:
        metrics_server.stop()
    shutdown_tracing()
    if not torch_thread_done:
        # The torch thread is stuck in a collective; the interpreter would wait for it at exit.
        logger.error("torch thread still busy at shutdown (a collective waits for a dead peer); exiting now")
        logging.shutdown()
        os._exit(exit_code or 1)
    return exit_code

"""The frontend's servers: gRPC FrontendService (health, reflection), the OpenAI HTTP API when
http_port is set, and the scheduler health checks."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from infermesh.v1 import frontend_pb2, frontend_pb2_grpc
from infermesh_shared.discovery import make_discovery, split_host_port
from infermesh_shared.grpc_server import add_health_and_reflection, set_serving
from infermesh_shared.grpc_transport import (
    PLAINTEXT,
    TlsConfigError,
    TlsFiles,
    aio_server,
    bind,
    internal_tls,
    is_loopback,
)
from infermesh_shared.telemetry.metrics_server import MetricsServer, create_registry, start_metrics_server
from infermesh_shared.telemetry.request_metrics import RequestMetrics

from infermesh_frontend.client_auth import AioApiKeyInterceptor, ApiKeyConfigError, ApiKeys
from infermesh_frontend.model_info import ModelInfoSource
from infermesh_frontend.openai_http.app import OpenAIHttpServer
from infermesh_frontend.openai_http.connection_guard import HttpLimits
from infermesh_frontend.request_bounds import RequestBounds
from infermesh_frontend.request_error import RequestError
from infermesh_frontend.request_runner import RequestRunner
from infermesh_frontend.routing.routing_metrics import RoutingMetrics
from infermesh_frontend.scheduler_pool import SchedulerPool
from infermesh_frontend.servicer import FrontendServicer
from infermesh_frontend.tokenizer import FrontendTokenizer

logger = logging.getLogger(__name__)

SERVICE_NAME = frontend_pb2.DESCRIPTOR.services_by_name["FrontendService"].full_name
# The client-facing port is the one strangers reach: a generate request is small.
CLIENT_MAX_RECEIVE_BYTES = 4 * 1024 * 1024


class UnsupportedOptionError(ValueError):
    """A configured option this frontend cannot honour (refused, never silently ignored)."""


@dataclass(slots=True)
class FrontendSettings:
    """The options the frontend server runs with."""

    model_path: str
    scheduler_addresses: list[str]
    host: str = "127.0.0.1"
    port: int = 0
    # Port of the OpenAI-compatible HTTP API (same host); 0 = off.
    http_port: int = 0
    dispatch_policy: str = "round_robin"
    # How scheduler replicas are found: static (scheduler_addresses), dns (dns_name), redis (redis_url).
    discovery: str = "static"
    dns_name: str = ""
    redis_url: str = ""
    load_poll_interval_ms: int = 500
    default_max_tokens: int = 16
    max_stop_strings: int = 16
    request_timeout_ms: int = 0
    health_check_interval_ms: int = 1000
    # Replicas a request may be tried on before it fails with UNAVAILABLE.
    failover_max_attempts: int = 3
    # Port of the Prometheus /metrics endpoint; 0 = off.
    metrics_port: int = 0
    # The frontend's certificate toward the schedulers (mutual TLS), and whether the client
    # ports serve TLS with it too.
    tls: TlsFiles = PLAINTEXT
    client_tls: bool = False
    api_keys: ApiKeys = field(default_factory=lambda: ApiKeys(()))
    bounds: RequestBounds = field(default_factory=RequestBounds)
    http_limits: HttpLimits = field(default_factory=HttpLimits)
    enable_reflection: bool = False
    client_interceptors: list[Any] = field(default_factory=list)
    server_interceptors: list[Any] = field(default_factory=list)

    @classmethod
    def from_config(cls, cfg: Any) -> FrontendSettings:
        """Settings from a load_config("frontend") result; refuses options not built yet."""
        refusals = []
        if cfg.http_port and cfg.http_port in (cfg.port, cfg.metrics_port):
            refusals.append(
                f"http_port {cfg.http_port} is also the gRPC port or the metrics port; "
                "give the HTTP API a port of its own"
            )
        addresses = list(cfg.scheduler_addresses)
        if cfg.discovery == "static" and not addresses:
            refusals.append(
                "scheduler_addresses is empty; give at least one scheduler as --scheduler-addresses HOST:PORT"
            )
        if cfg.discovery != "static" and addresses:
            refusals.append(
                f"scheduler_addresses is only read with discovery = static, not {cfg.discovery}; "
                "drop one of them"
            )
        if cfg.discovery == "dns":
            try:
                split_host_port(cfg.dns_name)
            except ValueError as error:
                refusals.append(
                    f"discovery = dns needs --dns-name HOST:PORT resolving to every replica ({error})"
                )
        if cfg.discovery == "redis" and not cfg.redis_url:
            refusals.append(
                "discovery = redis needs --redis-url redis://HOST:PORT/DB (where the schedulers register)"
            )
        tls = PLAINTEXT
        try:
            tls = internal_tls(cfg, "the frontend")
        except TlsConfigError as error:
            refusals.append(str(error))
        api_keys = ApiKeys(())
        try:
            api_keys = ApiKeys.from_config(cfg)
        except ApiKeyConfigError as error:
            refusals.append(str(error))
        if cfg.client_tls and not (tls.cert_file and tls.key_file):
            refusals.append("client_tls needs tls_cert_file and tls_key_file (the frontend's certificate)")
        if refusals:
            raise UnsupportedOptionError("; ".join(refusals))
        if not cfg.client_tls and not is_loopback(cfg.host):
            logger.warning(
                "the client ports on %s are plaintext: API keys and prompts cross the network in the "
                "clear; set client_tls = true",
                cfg.host,
            )
        return cls(
            model_path=cfg.model_path,
            scheduler_addresses=addresses,
            host=cfg.host,
            port=cfg.port,
            http_port=cfg.http_port,
            dispatch_policy=cfg.dispatch_policy,
            discovery=cfg.discovery,
            dns_name=cfg.dns_name,
            redis_url=cfg.redis_url,
            load_poll_interval_ms=cfg.load_poll_interval_ms,
            default_max_tokens=cfg.default_max_tokens,
            max_stop_strings=cfg.max_stop_strings,
            request_timeout_ms=cfg.request_timeout_ms,
            health_check_interval_ms=cfg.health_check_interval_ms,
            failover_max_attempts=cfg.failover_max_attempts,
            metrics_port=cfg.metrics_port,
            tls=tls,
            client_tls=cfg.client_tls,
            api_keys=api_keys,
            bounds=RequestBounds.from_config(cfg),
            enable_reflection=cfg.enable_reflection,
            http_limits=HttpLimits(
                max_connections=cfg.http_max_connections,
                header_timeout_s=cfg.http_header_timeout_ms / 1000,
                body_timeout_s=cfg.http_body_timeout_ms / 1000,
                keepalive_timeout_s=cfg.http_keepalive_timeout_ms / 1000,
                max_body_bytes=cfg.http_max_body_bytes,
            ),
        )


class FrontendServer:
    """Owns the gRPC server, the scheduler pool and the health-check loop."""

    def __init__(self, settings: FrontendSettings, tokenizer: FrontendTokenizer | None = None) -> None:
        self.settings = settings
        self.tokenizer = tokenizer or FrontendTokenizer.from_model_path(settings.model_path)
        discovery = make_discovery(
            settings.discovery,
            scheduler_addresses=settings.scheduler_addresses,
            dns_name=settings.dns_name,
            redis_url=settings.redis_url,
        )
        self.registry = create_registry("frontend")
        self.pool = SchedulerPool(
            settings.scheduler_addresses,
            settings.dispatch_policy,
            interceptors=settings.client_interceptors,
            discovery=discovery,
            load_poll_interval_ms=settings.load_poll_interval_ms,
            health_check_interval_ms=settings.health_check_interval_ms,
            metrics=RoutingMetrics(self.registry),
            tls=settings.tls,
        )
        self.model_info = ModelInfoSource(self.pool)
        self.metrics = RequestMetrics(self.registry)
        self.metrics_server: MetricsServer | None = None
        key_check = [AioApiKeyInterceptor(settings.api_keys)] if settings.api_keys.enabled else []
        self.server = aio_server(
            CLIENT_MAX_RECEIVE_BYTES, interceptors=[*key_check, *settings.server_interceptors]
        )
        if settings.api_keys.enabled:
            logger.info("clients need one of %d API keys (Authorization: Bearer)", len(settings.api_keys))
        else:
            logger.warning("no api_keys configured: any client that reaches the frontend may use it")
        self.runner = RequestRunner(
            self.tokenizer,
            self.pool,
            self.model_info,
            default_max_tokens=settings.default_max_tokens,
            max_stop_strings=settings.max_stop_strings,
            request_timeout_ms=settings.request_timeout_ms,
            failover_max_attempts=settings.failover_max_attempts,
            metrics=self.metrics,
            bounds=settings.bounds,
        )
        frontend_pb2_grpc.add_FrontendServiceServicer_to_server(
            FrontendServicer(self.runner, settings.api_keys), self.server
        )
        self.http_server: OpenAIHttpServer | None = None
        if settings.http_port:
            ssl_context = settings.tls.server_ssl_context() if settings.client_tls else None
            self.http_server = OpenAIHttpServer(
                self.runner,
                settings.host,
                settings.http_port,
                ssl_context=ssl_context,
                api_keys=settings.api_keys,
                limits=settings.http_limits,
                registry=self.registry,
            )
        self.health = add_health_and_reflection(
            self.server, [SERVICE_NAME], reflection_on=settings.enable_reflection
        )
        self.port = 0
        self._health_task: asyncio.Task[None] | None = None
        self._serving = False

    async def start(self) -> int:
        """Binds and starts serving; returns the bound port."""
        address = f"{self.settings.host}:{self.settings.port}"
        client_tls = self.settings.tls if self.settings.client_tls else PLAINTEXT
        self.port = bind(self.server, address, client_tls, require_client_cert=False)
        await self.server.start()
        if self.http_server is not None:
            await self.http_server.start()
        # Find the scheduler replicas and learn their load before the first request is routed.
        await self.pool.start()
        if self.settings.metrics_port:
            self.metrics_server = start_metrics_server(
                self.settings.metrics_port, self.registry, self.settings.host
            )
            logger.info("metrics at %s", self.metrics_server.url)
        self._health_task = asyncio.get_running_loop().create_task(self._check_schedulers())
        return self.port

    async def _check_schedulers(self) -> None:
        """Keeps the health status in step with whether any scheduler answers GetModelInfo."""
        interval_s = self.settings.health_check_interval_ms / 1000
        while True:
            try:
                model = await self.model_info.fetch()
                serving = True
                self.registry.model_name = model.model_name
                if not self._serving:
                    logger.info(
                        "scheduler answered: model %s, vocab %d, max_model_len %d",
                        model.model_name,
                        model.vocab_size,
                        model.max_model_len,
                    )
                    if model.vocab_size and self.tokenizer.vocab_size > model.vocab_size:
                        logger.warning(
                            "tokenizer has %d ids, the model only %d: prompts may hold ids the model rejects",
                            self.tokenizer.vocab_size,
                            model.vocab_size,
                        )
            except RequestError as error:
                serving = False
                if self._serving:
                    logger.warning("%s", error.message)
            if serving != self._serving:
                set_serving(self.health, [SERVICE_NAME], serving)
                self._serving = serving
            await asyncio.sleep(interval_s)

    async def stop(self, grace_s: float = 1.0) -> None:
        """Stops serving, cancels the health loop, closes the scheduler channels."""
        if self._health_task is not None:
            self._health_task.cancel()
            try:
                await self._health_task
            except asyncio.CancelledError:
                pass
        if self.http_server is not None:
            await self.http_server.stop()
        await self.server.stop(grace_s)
        await self.pool.close()
        if self.metrics_server is not None:
            self.metrics_server.stop()

"""The frontend's servers: gRPC FrontendService (health, reflection), the OpenAI HTTP API when
http_port is set, and the scheduler health checks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import grpc
from infermesh.v1 import frontend_pb2, frontend_pb2_grpc, rescheduler_pb2_grpc
from infermesh_shared.config import FrontendConfig
from infermesh_shared.discovery import make_discovery
from infermesh_shared.grpc_server import add_health_and_reflection, set_serving
from infermesh_shared.grpc_transport import (
    PLAINTEXT,
    aio_server,
    bind,
    internal_tls,
    is_loopback,
)
from infermesh_shared.telemetry.metrics_server import MetricsServer, create_registry, start_metrics_server
from infermesh_shared.telemetry.request_metrics import RequestMetrics

from infermesh_frontend.client_auth import AioApiKeyInterceptor, ApiKeys, grpc_authorization
from infermesh_frontend.drain import Drain
from infermesh_frontend.model_info import ModelInfoSource
from infermesh_frontend.openai_http.app import OpenAIHttpServer
from infermesh_frontend.openai_http.connection_guard import HttpLimits
from infermesh_frontend.openai_http.served_models import ServedModels
from infermesh_frontend.request_error import RequestError
from infermesh_frontend.request_runner import RequestRunner
from infermesh_frontend.rescheduling.lease import make_lease
from infermesh_frontend.rescheduling.operator_service import ReschedulerServicer
from infermesh_frontend.rescheduling.rescheduler import Rescheduler, ReschedulerMetrics
from infermesh_frontend.routing.routing_metrics import RoutingMetrics
from infermesh_frontend.scheduler_pool import SchedulerPool
from infermesh_frontend.servicer import FrontendServicer
from infermesh_frontend.tokenizer import FrontendTokenizer

logger = logging.getLogger(__name__)

SERVICE_NAME = frontend_pb2.DESCRIPTOR.services_by_name["FrontendService"].full_name
# The client-facing port is the one strangers reach: a generate request is small.
CLIENT_MAX_RECEIVE_BYTES = 4 * 1024 * 1024


class FrontendServer:
    """Owns the gRPC server, the scheduler pool and the health-check loop."""

    def __init__(
        self,
        cfg: FrontendConfig,
        tokenizer: FrontendTokenizer | None = None,
        *,
        client_interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
        server_interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    ) -> None:
        """Raises TlsConfigError or ApiKeyConfigError when the certificate or key files are unusable."""
        self.cfg = cfg
        # The frontend's certificate toward the schedulers (mutual TLS), also served on the client
        # ports with client_tls.
        self.tls = internal_tls(cfg, "the frontend")
        self.api_keys = ApiKeys.from_config(cfg)
        if not cfg.client_tls and not is_loopback(cfg.host):
            logger.warning(
                "the client ports on %s are plaintext: API keys and prompts cross the network in the "
                "clear; set client_tls = true",
                cfg.host,
            )
        self.tokenizer = tokenizer or FrontendTokenizer.from_model_path(cfg.model_path)
        discovery = make_discovery(
            cfg.discovery,
            scheduler_addresses=list(cfg.scheduler_addresses),
            dns_name=cfg.dns_name,
            redis_url=cfg.redis_url,
        )
        self.registry = create_registry("frontend")
        self.pool = SchedulerPool(
            cfg.routing_config,
            discovery,
            client_interceptors,
            metrics=RoutingMetrics(self.registry),
            tls=self.tls,
        )
        self.model_info = ModelInfoSource(self.pool)
        self.metrics = RequestMetrics(self.registry)
        self.metrics_server: MetricsServer | None = None
        key_check = [AioApiKeyInterceptor(self.api_keys)] if self.api_keys.enabled else []
        self.server = aio_server(CLIENT_MAX_RECEIVE_BYTES, interceptors=[*key_check, *server_interceptors])
        if self.api_keys.enabled:
            logger.info("clients need one of %d API keys (Authorization: Bearer)", len(self.api_keys))
        else:
            logger.warning("no api_keys configured: any client that reaches the frontend may use it")
        self.runner = RequestRunner(
            self.tokenizer,
            self.pool,
            self.model_info,
            cfg.request_config,
            failover_max_attempts=cfg.failover_max_attempts,
            metrics=self.metrics,
            drain=Drain(),
        )
        frontend_pb2_grpc.add_FrontendServiceServicer_to_server(
            FrontendServicer(self.runner, self.api_keys), self.server
        )
        # The operator's drain and migrate: with API keys, operator keys only.
        rescheduler_pb2_grpc.add_ReschedulerServiceServicer_to_server(
            ReschedulerServicer(self.replica_stubs, cfg.rescheduling_config, self._operator_refusal),
            self.server,
        )
        self.rescheduler: Rescheduler | None = None
        if cfg.enable_rescheduling and cfg.colocated_rescheduling_mode:
            self.rescheduler = Rescheduler(
                cfg.rescheduling_config,
                self.replica_stubs,
                make_lease(cfg.rescheduling_config),
                ReschedulerMetrics(self.registry),
            )
        self.http_server: OpenAIHttpServer | None = None
        if cfg.http_port:
            ssl_context = self.tls.server_ssl_context() if cfg.client_tls else None
            self.http_server = OpenAIHttpServer(
                self.runner,
                cfg.host,
                cfg.http_port,
                ssl_context=ssl_context,
                api_keys=self.api_keys,
                limits=HttpLimits(
                    max_connections=cfg.http_max_connections,
                    header_timeout_s=cfg.http_header_timeout_ms / 1000,
                    body_timeout_s=cfg.http_body_timeout_ms / 1000,
                    keepalive_timeout_s=cfg.http_keepalive_timeout_ms / 1000,
                    max_body_bytes=cfg.http_max_body_bytes,
                ),
                registry=self.registry,
                served=ServedModels(list(cfg.served_model_name)),
                strict_request_fields=cfg.strict_request_fields,
            )
        self.health = add_health_and_reflection(
            self.server, [SERVICE_NAME], reflection_on=cfg.enable_reflection
        )
        self.port = 0
        self._health_task: asyncio.Task[None] | None = None
        self._serving = False

    async def start(self) -> int:
        """Binds and starts serving; returns the bound port."""
        address = f"{self.cfg.host}:{self.cfg.port}"
        client_tls = self.tls if self.cfg.client_tls else PLAINTEXT
        self.port = bind(self.server, address, client_tls, require_client_cert=False)
        await self.server.start()
        if self.http_server is not None:
            await self.http_server.start()
        # Find the scheduler replicas and learn their load before the first request is routed.
        await self.pool.start()
        if self.cfg.metrics_port:
            self.metrics_server = start_metrics_server(self.cfg.metrics_port, self.registry, self.cfg.host)
            logger.info("metrics at %s", self.metrics_server.url)
        self._health_task = asyncio.get_running_loop().create_task(self._check_schedulers())
        if self.rescheduler is not None:
            await self.rescheduler.start()
        return self.port

    def _operator_refusal(self, context: grpc.aio.ServicerContext) -> str:
        return self.api_keys.operator_refusal(grpc_authorization(context.invocation_metadata()))

    def replica_stubs(self) -> dict[str, object]:
        """The scheduler stubs of every replica the pool knows (the rescheduler's view)."""
        return {replica.address: replica.stub for replica in self.pool.replicas}

    async def _check_schedulers(self) -> None:
        """Keeps the health status in step with whether any scheduler answers GetModelInfo."""
        interval_s = self.cfg.health_check_interval_ms / 1000
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

    async def drain(self, timeout_s: float) -> None:
        """Graceful shutdown, first half: health NOT_SERVING at once (balancers move away), new
        requests refused with UNAVAILABLE, running ones finish until `timeout_s`, the rest end with
        UNAVAILABLE "server shutting down". The servers keep answering until `stop`."""
        await self._stop_health_loop()
        set_serving(self.health, [SERVICE_NAME], False)
        self._serving = False
        await self._stop_rescheduler()  # gives its lease back: a standby takes over at once
        await self.runner.drain.drain(timeout_s)

    async def _stop_rescheduler(self) -> None:
        if self.rescheduler is not None:
            await self.rescheduler.stop()
            self.rescheduler = None

    async def _stop_health_loop(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            try:
                await self._health_task
            except asyncio.CancelledError:
                pass
            self._health_task = None

    async def stop(self, grace_s: float = 1.0) -> None:
        """Stops serving, cancels the health loop, closes the scheduler channels."""
        await self._stop_health_loop()
        await self._stop_rescheduler()
        if self.http_server is not None:
            await self.http_server.stop()
        await self.server.stop(grace_s)
        await self.pool.close()
        if self.metrics_server is not None:
            self.metrics_server.stop()

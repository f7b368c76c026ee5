"""WorkerService over gRPC: turns requests into ModelRunner calls on one dedicated torch thread."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from infermesh.v1 import worker_pb2, worker_pb2_grpc
from infermesh_shared.grpc_transport import PLAINTEXT, TlsFiles, open_channel
from infermesh_shared.peer_roles import WORKER
from infermesh_shared.telemetry import WorkerMetrics, semconv, tracing_enabled
from opentelemetry import trace

from infermesh_worker import kv_transfer
from infermesh_worker.errors import FailedPreconditionError, InvalidArgumentError, WorkerError
from infermesh_worker.model_config import load_model_config
from infermesh_worker.model_runner import ModelRunner
from infermesh_worker.plan_codec import decode_load_request, decode_plan, encode_result
from infermesh_worker.status_table import status_of
from infermesh_worker.step_plan import StepPlan

logger = logging.getLogger(__name__)


# How often a pipelined Execute waiting for its predecessor checks that its caller is still there (s).
_ORDER_POLL_S = 0.2


class WorkerServicer(worker_pb2_grpc.WorkerServiceServicer):
    """All torch work runs on one thread, in arrival order, so steps never overlap and every rank
    issues its collectives in the same order. Pipelined plans (several Execute calls in flight)
    name their predecessor (previous_step_id) and are queued on that thread in that chain order,
    whatever order their calls arrive in."""

    def __init__(
        self, runner: ModelRunner, metrics: WorkerMetrics | None = None, peer_tls: TlsFiles = PLAINTEXT
    ) -> None:
        self.runner = runner
        self.metrics = metrics
        # The credentials this worker presents to another group's worker (KV transfer).
        self.peer_tls = peer_tls
        self._torch_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="torch")
        # step_id of the last plan queued on the torch thread (0 after LoadModel, InitKVCache, Reset).
        self._order = threading.Condition()
        self._last_step = 0

    def close(self, timeout_s: float = 5.0) -> bool:
        """Leaves the process group and stops the torch thread; False when the thread is still busy
        (e.g. blocked in a collective with a dead peer) after timeout_s."""
        future = self._torch_thread.submit(self.runner.shutdown)
        self._torch_thread.shutdown(wait=False)
        try:
            future.result(timeout=timeout_s)
        except TimeoutError:
            return False
        return True

    def _restart_chain(self) -> None:
        with self._order:
            self._last_step = 0
            self._order.notify_all()

    def _queue_step(self, context: grpc.ServicerContext, plan: StepPlan):
        """Queues the plan on the torch thread right after its predecessor; returns the future."""
        with self._order:
            if plan.previous_step_id:
                waited_until = time.monotonic() + self.runner.dist_timeout_s
                while self._last_step != plan.previous_step_id:
                    if not context.is_active():
                        context.abort(grpc.StatusCode.CANCELLED, f"step {plan.step_id} was cancelled")
                    if time.monotonic() > waited_until:
                        context.abort(
                            grpc.StatusCode.FAILED_PRECONDITION,
                            f"step {plan.step_id} follows step {plan.previous_step_id}, which never arrived "
                            f"(last step queued: {self._last_step}); reset the worker and resend",
                        )
                    self._order.wait(_ORDER_POLL_S)
            future = self._torch_thread.submit(self.runner.execute, plan)
            self._last_step = plan.step_id
            self._order.notify_all()
        return future

    def _call(self, context: grpc.ServicerContext, what: str, fn, *args, queued=None) -> Any:
        try:
            future = queued if queued is not None else self._torch_thread.submit(fn, *args)
            return future.result()
        except WorkerError as exc:
            logger.warning("%s failed: %s", what, exc)
            context.abort(*status_of(exc))
        except Exception as exc:  # noqa: BLE001 - any torch failure becomes INTERNAL with its text
            logger.exception("%s failed", what)
            context.abort(
                grpc.StatusCode.INTERNAL, f"{what} failed on this worker: {type(exc).__name__}: {exc}"
            )

    def LoadModel(self, request: worker_pb2.LoadModelRequest, context) -> worker_pb2.LoadModelResponse:
        spec = decode_load_request(request)
        logger.info(
            "loading %s (dtype=%s tp=%d/%d pp=%d/%d)",
            spec.model_path,
            spec.dtype,
            spec.tp_rank,
            spec.tp_size,
            spec.pp_rank,
            spec.pp_size,
        )
        try:
            # Refused before anything is unloaded: the model served so far keeps serving.
            load_model_config(spec.model_path, spec.config_overrides_json, spec.disable_sliding_window)
        except WorkerError as exc:
            logger.warning("LoadModel refused: %s", exc)
            context.abort(*status_of(exc))
        self._restart_chain()
        result = self._call(context, "LoadModel", self.runner.load_model, spec)
        if self.metrics is not None:
            self.metrics.model_loaded(spec.model_path)
        logger.info(
            "model loaded (%s): %d KV blocks of %d bytes fit",
            result.dtype,
            result.max_num_blocks,
            result.block_bytes,
        )
        return worker_pb2.LoadModelResponse(
            max_num_blocks=result.max_num_blocks, block_bytes=result.block_bytes, dtype=result.dtype
        )

    def InitKVCache(self, request: worker_pb2.InitKVCacheRequest, context) -> worker_pb2.InitKVCacheResponse:
        self._restart_chain()
        self._call(
            context, "InitKVCache", self.runner.init_kv_cache, request.num_blocks, request.num_cpu_blocks
        )
        logger.info(
            "KV cache ready: %d device blocks, %d CPU blocks", request.num_blocks, request.num_cpu_blocks
        )
        return worker_pb2.InitKVCacheResponse()

    def Execute(self, request: worker_pb2.ExecuteRequest, context) -> worker_pb2.ExecuteResponse:
        start = time.perf_counter()
        plan = decode_plan(request.plan)
        queued = self._queue_step(context, plan)
        result = self._call(context, "Execute", self.runner.execute, plan, queued=queued)
        if self.metrics is not None:
            self.metrics.step_seconds.observe(time.perf_counter() - start)
            self.metrics.step_tokens.inc(plan.num_scheduled_tokens())
        if tracing_enabled():
            # The interceptor's Execute server span is current: it is the engine step's child.
            trace.get_current_span().set_attributes(
                {
                    semconv.STEP_ID: plan.step_id,
                    semconv.STEP_BATCH_SIZE: len(plan.new_sequences) + len(plan.running_sequences),
                    semconv.STEP_COMPUTE_TIME_US: result.compute_time_us,
                }
            )
        return encode_result(result)

    def Reset(self, request: worker_pb2.ResetRequest, context) -> worker_pb2.ResetResponse:
        self._restart_chain()
        self._call(context, "Reset", self.runner.reset)
        return worker_pb2.ResetResponse()

    # --- KV transfer between groups (live migration); runs beside steps, not on the torch thread

    def _transfer_side(self) -> tuple[kv_transfer.KVCache, kv_transfer.KVLayout]:
        cache = self.runner.kv_cache
        if cache is None:
            raise FailedPreconditionError("no KV cache yet: LoadModel and InitKVCache come before a transfer")
        return cache, kv_transfer.KVLayout.of(cache, self.runner.parallel)

    def SendKVBlocks(
        self, request: worker_pb2.SendKVBlocksRequest, context
    ) -> worker_pb2.SendKVBlocksResponse:
        try:
            cache, layout = self._transfer_side()
            src, dst = list(request.src_block_ids), list(request.dst_block_ids)
            if len(src) != len(dst):
                raise InvalidArgumentError(
                    f"src_block_ids ({len(src)}) and dst_block_ids ({len(dst)}) differ in length"
                )
            if not request.destination_address:
                raise InvalidArgumentError("destination_address is empty")
            kv_transfer.check_block_ids(src, cache.num_blocks, "src_block_ids")
            chunk = kv_transfer.resolve_chunk_bytes(request.chunk_bytes)
        except WorkerError as exc:
            context.abort(*status_of(exc))
        messages = kv_transfer.send_stream(cache, layout, src, dst, request.transfer_id, chunk)
        options = [("grpc.max_send_message_length", chunk + 65536)]
        with open_channel(
            request.destination_address, self.peer_tls, server_role=WORKER, options=options
        ) as ch:
            stub = worker_pb2_grpc.WorkerServiceStub(ch)
            try:
                received = stub.ReceiveKVBlocks(messages, timeout=context.time_remaining())
            except grpc.RpcError as exc:
                logger.warning(
                    "transfer %r to %s failed: %s",
                    request.transfer_id,
                    request.destination_address,
                    exc.details(),
                )
                context.abort(
                    exc.code(), f"destination worker {request.destination_address}: {exc.details()}"
                )
        return worker_pb2.SendKVBlocksResponse(
            num_blocks=received.num_blocks,
            num_bytes=len(src) * layout.block_bytes,
            block_checksums=received.block_checksums,
        )

    def ReceiveKVBlocks(self, request_iterator, context) -> worker_pb2.ReceiveKVBlocksResponse:
        try:
            cache, layout = self._transfer_side()
            checksums = kv_transfer.receive_stream(cache, layout, request_iterator)
        except WorkerError as exc:
            logger.warning("KV transfer refused: %s", exc)
            context.abort(*status_of(exc))
        return worker_pb2.ReceiveKVBlocksResponse(num_blocks=len(checksums), block_checksums=checksums)

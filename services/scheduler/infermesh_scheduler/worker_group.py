"""The worker group: registration, rank assignment, model loading, step fan-out, failure recovery.

Recovery protocol: when any member fails (an RPC error or timeout, or a missed liveness probe),
the group becomes RECOVERING, every member is probed, members that do not answer are dropped,
and as soon as tp_size*pp_size live workers are registered the group is formed again from
scratch: every member gets Reset (if it was loaded before), then LoadModel with its new rank and
a fresh rendezvous port (so all members join a new torch.distributed group), then InitKVCache
with the same pool size as before. The engine loop resets the core so every live sequence is
re-sent in full and recomputed. If the group is not whole within group_recovery_timeout_ms it
becomes DOWN: live requests end with UNAVAILABLE and new ones are refused until it comes back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2
from infermesh.v1 import worker_pb2
from infermesh_shared.config import SchedulerConfig
from infermesh_shared.grpc_transport import TlsFiles

from infermesh_scheduler.group_state import GroupEvent, GroupState
from infermesh_scheduler.group_tracing import forming_span
from infermesh_scheduler.worker_handle import WorkerHandle, free_tcp_port, rendezvous_host

logger = logging.getLogger(__name__)

# Answers to LoadModel/InitKVCache that mean "this configuration cannot work here", not a glitch.
_REFUSALS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.PERMISSION_DENIED,
    }
)
# Pause before forming again after a transient failure (s).
_REFORM_BACKOFF_S = 0.5


class GroupFull(Exception):
    """A worker registers while num_workers live workers are registered already."""


class NameTaken(Exception):
    """A worker registers under the name of a worker that still answers."""


class WorkerGroupFailure(Exception):
    """A step could not run because the group is not ready or a member failed."""


class WorkerGroup:
    """Registered workers, the tp_size*pp_size of them that form the group, and their state."""

    def __init__(
        self,
        settings: SchedulerConfig,
        tls: TlsFiles,
        on_state: Callable[[GroupEvent], None],
        check_pool: Callable[[int], str] = lambda num_blocks: "",
    ) -> None:
        self._settings = settings
        # The scheduler's certificate toward its workers (plaintext when not enabled).
        self._tls = tls
        self._world_size = settings.tp_size * settings.pp_size
        # Told every change of state (the engine loop reacts: builds or resets the core, fails requests).
        self._on_state = on_state
        # Says why a pool of that many blocks cannot serve this config ("" when it can).
        self._check_pool = check_pool
        self._workers: dict[str, WorkerHandle] = {}  # registration order = preference for membership
        self._members: list[WorkerHandle] = []  # rank order while FORMING/READY
        self._next_id = 0
        self.state = GroupState.WAITING_FOR_WORKERS
        # step_id of the last pipelined plan sent to the current formation (0: none since it formed).
        self._last_sent_step = 0
        self.num_blocks = 0
        self.dtype = ""  # the dtype the loaded workers use; empty until the group formed
        self.num_cpu_blocks = 0
        self.last_ok = time.monotonic()
        self._form_task: asyncio.Task[None] | None = None
        self._recovery_task: asyncio.Task[None] | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._liveness_task: asyncio.Task[None] | None = None
        self._misconfigured_reason = ""
        self._closing: set[asyncio.Task[None]] = set()

    # ----- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Starts the idle liveness poll."""
        self._liveness_task = asyncio.create_task(self._poll_liveness(), name="worker-liveness")

    async def stop(self) -> None:
        """Stops background tasks and closes every worker channel."""
        for task in (self._form_task, self._recovery_task, self._probe_task, self._liveness_task):
            if task is not None:
                task.cancel()
        for worker in self._workers.values():
            await worker.channel.close()

    # ----- queries ------------------------------------------------------------------------
    @property
    def settings(self) -> SchedulerConfig:
        return self._settings

    def members(self) -> list[WorkerHandle]:
        """The group's workers in rank order (empty unless READY)."""
        return list(self._members) if self.state is GroupState.READY else []

    def member_addresses(self) -> list[str]:
        return [m.address for m in self.members()]

    @property
    def is_ready(self) -> bool:
        return self.state is GroupState.READY

    def down_message(self) -> str:
        """Why requests cannot be served now, with what to do about it."""
        if self.state is GroupState.MISCONFIGURED:
            return f"worker group cannot start: {self._misconfigured_reason}"
        need = self._world_size
        return (
            f"worker group is down: {len(self._workers)} of {need} workers (tp_size*pp_size) registered "
            f"and ready; start the missing infermesh-worker processes"
        )

    def is_registered(self, worker_id: str, address: str) -> bool:
        """Whether the worker registered as `worker_id` from `address` is still registered (CheckWorker)."""
        worker = self._workers.get(worker_id)
        return worker is not None and worker.address == address

    # ----- registration -------------------------------------------------------------------
    async def register(self, address: str, device: str, name: str) -> str:
        """Adds a worker (replacing an older registration of the same name or address); returns its id.

        Raises GroupFull when num_workers live workers are registered already, NameTaken when
        another address registers under the name of a worker that still answers.
        """
        for old in list(self._workers.values()):
            if name and old.name == name and old.address != address and await self._alive(old):
                # The live one is asked, not replaced: a name is no credential.
                logger.warning(
                    "refused a registration as %s from %s: the worker of that name at %s answers",
                    name,
                    address,
                    old.address,
                )
                raise NameTaken(
                    f"worker name {name!r} belongs to a live worker at {old.address}; give this worker "
                    "another --worker-name, or stop the other one first"
                )
        for old in list(self._workers.values()):
            if (name and old.name == name) or old.address == address:
                logger.warning(
                    "worker %s (%s) registered again: its previous instance is gone", name, address
                )
                self._drop(old)
                if old in self._members:
                    self._member_failed(f"worker {old.name or old.address} restarted")
        if len(self._workers) >= self._settings.num_workers:
            await self._probe_all()  # a replacement may be registering before its predecessor was noticed
        if len(self._workers) >= self._settings.num_workers:
            raise GroupFull(
                f"num_workers={self._settings.num_workers} live workers are registered already "
                f"({', '.join(w.name for w in self._workers.values())}); raise num_workers to add standbys"
            )
        self._next_id += 1
        worker_id = f"w{self._next_id}"
        self._workers[worker_id] = WorkerHandle.connect(
            worker_id, name or worker_id, address, device, self._tls
        )
        logger.info(
            "worker %s registered: name=%s address=%s device=%s (%d registered, %d form the group)",
            worker_id,
            name,
            address,
            device,
            len(self._workers),
            self._world_size,
        )
        self._maybe_form()
        return worker_id

    def _drop(self, worker: WorkerHandle) -> None:
        self._workers.pop(worker.worker_id, None)
        closing = asyncio.get_running_loop().create_task(worker.channel.close())
        # The loop keeps only weak references to tasks: hold it until it is done.
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    # ----- forming ------------------------------------------------------------------------
    def _maybe_form(self) -> None:
        if self.state in (GroupState.READY, GroupState.FORMING, GroupState.MISCONFIGURED):
            return
        if self._probe_task is not None and not self._probe_task.done():
            return  # re-evaluated once the probe after a failure has dropped the dead
        if len(self._workers) >= self._world_size:
            self._form_task = asyncio.create_task(self._form(), name="worker-group-form")

    def _backend(self, members: list[WorkerHandle]) -> str:
        if self._settings.dist_backend != "auto":
            return self._settings.dist_backend
        return "nccl" if any(m.device.startswith("cuda") for m in members) else "gloo"

    async def _form(self) -> None:
        previous = self.state
        try:
            with forming_span(self._world_size):
                await self._form_from(previous)
        except Exception:  # a bug here must not leave the group FORMING for ever
            logger.exception("forming the worker group failed unexpectedly; waiting for workers again")
            self._members = []
            self._set_state(previous, "forming failed unexpectedly")

    async def _form_from(self, previous: GroupState) -> None:
        s = self._settings
        self._set_state(GroupState.FORMING, f"forming the worker group of {self._world_size} workers")
        members = list(self._workers.values())[: self._world_size]
        self._members = members
        init_method = (
            "" if self._world_size == 1 else f"tcp://{rendezvous_host(members[0].address)}:{free_tcp_port()}"
        )
        backend = self._backend(members)
        logger.info(
            "forming worker group: tp_size=%d pp_size=%d backend=%s rendezvous=%s members=%s",
            s.tp_size,
            s.pp_size,
            backend,
            init_method or "(single worker)",
            [f"rank{r}={m.name}@{m.address}" for r, m in enumerate(members)],
        )
        try:
            await self._call_all(
                [m for m in members if m.loaded],
                lambda m: m.stub.Reset(worker_pb2.ResetRequest(), timeout=s.worker_load_timeout_ms / 1000),
            )
            loaded = await self._call_all(
                members,
                lambda m: m.stub.LoadModel(
                    self._load_request(members.index(m), init_method, backend),
                    timeout=s.worker_load_timeout_ms / 1000,
                ),
            )
            for m in members:
                m.loaded = True
            # Workers resolve dtype "auto" for their device; the group reports what they chose.
            self.dtype = loaded[0].dtype or s.dtype
            num_blocks = self._pool_size(members, loaded)
            if num_blocks is None:
                return
            if not self.num_blocks:  # first formation; later ones keep the core's pool sizes
                self.num_cpu_blocks = (
                    (self._settings.num_cpu_blocks or num_blocks) if self._settings.enable_swap else 0
                )
            await self._call_all(
                members,
                lambda m: m.stub.InitKVCache(
                    worker_pb2.InitKVCacheRequest(num_blocks=num_blocks, num_cpu_blocks=self.num_cpu_blocks),
                    timeout=s.worker_load_timeout_ms / 1000,
                ),
            )
        except _MemberCallError as err:
            await self._after_failed_form(previous, err)
            return
        self.num_blocks = num_blocks
        self._last_sent_step = 0  # every member was Reset or loaded afresh: a new chain of plans
        self.last_ok = time.monotonic()
        if self._recovery_task is not None:
            self._recovery_task.cancel()
            self._recovery_task = None
        self._set_state(
            GroupState.READY,
            f"worker group ready: {num_blocks} KV blocks per worker, {self.num_cpu_blocks} CPU blocks",
        )

    async def _after_failed_form(self, previous: GroupState, err: _MemberCallError) -> None:
        """Drops dead members; a live member that refused the model makes the group MISCONFIGURED."""
        self._members = []
        self._set_state(previous, f"forming the worker group failed: {err}")
        refused = [
            (m, e) for m, e in err.failures if isinstance(e, grpc.aio.AioRpcError) and e.code() in _REFUSALS
        ]
        dead = await self._drop_dead()
        refused = [(m, e) for m, e in refused if m not in dead]
        if refused:
            m, e = refused[0]
            self._misconfigured_reason = f"worker {m.name} refused to load the model: {e.details()}"
            self._set_state(GroupState.MISCONFIGURED, f"refusing to serve: {self._misconfigured_reason}")
        else:
            # Transient (a peer vanished during the rendezvous, a timeout): retry, but not in a spin.
            await asyncio.sleep(_REFORM_BACKOFF_S)
        self._maybe_form()

    def _load_request(self, rank: int, init_method: str, backend: str) -> worker_pb2.LoadModelRequest:
        s = self._settings
        return worker_pb2.LoadModelRequest(
            model_path=s.model_path,
            dtype=s.dtype,
            tp_size=s.tp_size,
            tp_rank=rank % s.tp_size,
            pp_size=s.pp_size,
            pp_rank=rank // s.tp_size,
            dist_init_method=init_method,
            dist_backend=backend,
            block_size=s.block_size,
            max_model_len=s.max_model_len,
            gpu_memory_utilization=s.gpu_memory_utilization,
            config_overrides_json=s.custom_config or "",
            enable_flash_attn=s.enable_flash_attn,
            disable_sliding_window=s.disable_sliding_window,
        )

    def _pool_size(
        self, members: list[WorkerHandle], loaded: list[worker_pb2.LoadModelResponse]
    ) -> int | None:
        """Blocks for the pool, or None (group MISCONFIGURED) when the workers cannot hold what is asked."""
        smallest, holder = min((r.max_num_blocks, m.name) for m, r in zip(members, loaded, strict=True))
        wanted = self._settings.total_blocks or self.num_blocks  # after a re-form keep the core's pool size
        reason = ""
        if wanted == 0 and smallest == 0:
            reason = (
                f"worker {holder} has room for no KV block: "
                "raise gpu_memory_utilization or use a smaller model"
            )
        elif wanted > smallest:
            reason = (
                f"total_blocks={wanted} but worker {holder} can hold only {smallest} KV blocks: "
                f"lower total_blocks (or set it to 0 to size the pool from the workers)"
            )
        if not reason:
            reason = self._check_pool(wanted or smallest)
        if reason:
            self._misconfigured_reason = reason
            self._set_state(GroupState.MISCONFIGURED, f"refusing to serve: {reason}")
            return None
        return wanted or smallest

    async def _call_all(self, members: list[WorkerHandle], call: Callable[[WorkerHandle], object]) -> list:
        """Runs `call` on every member concurrently; raises _MemberCallError naming the ones that failed."""
        if not members:
            return []
        results = await asyncio.gather(*(call(m) for m in members), return_exceptions=True)
        failed = [(m, r) for m, r in zip(members, results, strict=True) if isinstance(r, BaseException)]
        if failed:
            raise _MemberCallError(failed)
        return results

    # ----- stepping -----------------------------------------------------------------------
    async def execute(self, plan: worker_pb2.StepPlan) -> worker_pb2.ExecuteResponse:
        """Runs one plan on every member; the answer of the last stage's tp_rank 0 carries the tokens.

        Pipelined plans (tokens_in_later_plans) may be executed concurrently: they are chained by
        previous_step_id in the order of these calls, which every worker then follows.
        """
        if self.state is not GroupState.READY:
            raise WorkerGroupFailure(f"worker group is {self.state.value}")
        members = self._members
        if plan.tokens_in_later_plans:
            # Several Execute calls are in flight and may reach a worker out of order: chain them.
            plan.previous_step_id = self._last_sent_step
            self._last_sent_step = plan.step_id
        request = worker_pb2.ExecuteRequest(plan=plan)
        timeout = self._settings.worker_timeout_ms / 1000
        try:
            if len(members) == 1:
                response = await members[0].stub.Execute(request, timeout=timeout)
            else:
                responses = await self._call_all(members, lambda m: m.stub.Execute(request, timeout=timeout))
                response = responses[(self._settings.pp_size - 1) * self._settings.tp_size]
        except grpc.aio.AioRpcError as err:
            self._member_failed(f"Execute on {members[0].name} failed: {err.code().name}: {err.details()}")
            raise WorkerGroupFailure(str(err.details())) from None
        except _MemberCallError as err:
            self._member_failed(f"Execute failed: {err}")
            raise WorkerGroupFailure(str(err)) from None
        self.last_ok = time.monotonic()
        return response

    # ----- state --------------------------------------------------------------------------
    def _set_state(self, new: GroupState, why: str) -> None:
        """The one place the group's state changes: logged, and told to the engine loop."""
        previous = self.state
        if new is previous:
            return
        self.state = new
        level = logging.INFO if new in (GroupState.FORMING, GroupState.READY) else logging.ERROR
        logger.log(level, "%s [worker group %s -> %s]", why, previous.value, new.value)
        self._on_state(GroupEvent(previous, new, why))

    # ----- failures -----------------------------------------------------------------------
    def report_failure(self, reason: str) -> None:
        """Treats the group as broken (its workers' sequence state can no longer be trusted)."""
        self._member_failed(reason)

    def _member_failed(self, reason: str) -> None:
        if self.state is not GroupState.READY:
            return
        self._recovery_task = asyncio.create_task(self._recovery_deadline(), name="worker-group-recovery")
        self._probe_task = asyncio.create_task(self._probe_after_failure(), name="worker-group-probe")
        self._set_state(
            GroupState.RECOVERING,
            f"worker group broken: {reason}; live requests will be recomputed when it is whole again",
        )

    async def _alive(self, worker: WorkerHandle) -> bool:
        try:
            await worker.health.Check(
                health_pb2.HealthCheckRequest(), timeout=self._settings.worker_timeout_ms / 1000
            )
        except grpc.aio.AioRpcError:
            return False
        return True

    async def _drop_dead(self) -> list[WorkerHandle]:
        workers = list(self._workers.values())
        alive = await asyncio.gather(*(self._alive(w) for w in workers))
        dead = [w for w, ok in zip(workers, alive, strict=True) if not ok]
        for w in dead:
            if w.worker_id in self._workers:
                logger.warning("worker %s (%s) does not answer: dropped", w.name, w.address)
                self._drop(w)
        return dead

    async def _probe_after_failure(self) -> None:
        await self._drop_dead()
        self._probe_task = None
        self._maybe_form()

    async def _recovery_deadline(self) -> None:
        await asyncio.sleep(self._settings.group_recovery_timeout_ms / 1000)
        self._recovery_task = None
        if self.state is not GroupState.READY and self.state is not GroupState.MISCONFIGURED:
            self._set_state(GroupState.DOWN, f"{self.down_message()} (waited group_recovery_timeout_ms)")

    async def _poll_liveness(self) -> None:
        interval = self._settings.worker_timeout_ms / 1000 / 3
        while True:
            await asyncio.sleep(interval)
            if self.state is GroupState.FORMING:
                continue
            if self.state is GroupState.READY and time.monotonic() - self.last_ok < interval:
                continue  # steps are succeeding: the members are alive
            if await self._probe_all() and self.state is GroupState.READY:
                self.last_ok = time.monotonic()

    async def _probe_all(self) -> bool:
        """Drops workers that do not answer; breaks the group if a member was one. True if none was."""
        dead = await self._drop_dead()
        if self.state is GroupState.READY and any(w in self._members for w in dead):
            self._member_failed("liveness probe: " + ", ".join(f"{w.name} ({w.address})" for w in dead))
        return not dead


class _MemberCallError(Exception):
    """One or more members failed a concurrent call."""

    def __init__(self, failed: list[tuple[WorkerHandle, BaseException]]) -> None:
        self.failures = failed
        parts = []
        for m, e in failed:
            detail = f"{e.code().name}: {e.details()}" if isinstance(e, grpc.aio.AioRpcError) else repr(e)
            parts.append(f"{m.name} ({m.address}): {detail}")
        super().__init__("; ".join(parts))

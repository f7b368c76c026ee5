"""Runs frontend, scheduler and workers as separate local processes (`infermesh up`, e2e tests).

Each service prints `<name> listening on HOST:PORT` once it serves; that line is how the launcher
learns the port a service bound (services take port 0 and pick a free one).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from infermesh_shared.grpc_transport import PLAINTEXT, TlsFiles, open_channel

log = logging.getLogger(__name__)

# After a service's own drain_timeout_s: time to close its channels and flush telemetry before it
# is killed.
STOP_MARGIN_S = 10.0
_ERROR_LINE = re.compile(r"\b(Error|ERROR|error:|refusing to serve|Traceback)")
_LISTENING = re.compile(r"(\w+) listening on (\S+:\d+)")


class ServiceStartError(RuntimeError):
    """A service exited or did not come up in time; the message carries its last output lines."""


@dataclass
class ServiceProcess:
    """One running service: its process, the address it announced, and its recent output."""

    name: str
    args: list[str]
    env: dict[str, str] | None = None
    log_path: Path | None = None
    # SIGTERM to SIGKILL: the service's drain_timeout_s plus STOP_MARGIN_S (see stop_grace_s).
    stop_timeout_s: float = 10.0
    process: subprocess.Popen | None = None
    address: str | None = None
    _tail: deque = field(default_factory=lambda: deque(maxlen=200))
    _listening: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        # If the launcher itself dies (even by SIGKILL) the kernel ends the service too.
        args = [sys.executable, "-m", "infermesh_cli.die_with_parent", str(os.getpid()), *self.args]
        self.process = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            text=True,
            bufsize=1,
            # Own session: a terminal's Ctrl-C reaches the launcher only, which stops services in order.
            start_new_session=True,
        )
        threading.Thread(target=self._pump, name=f"{self.name}-output", daemon=True).start()

    def _pump(self) -> None:
        sink = self.log_path.open("a") if self.log_path else None
        try:
            assert self.process is not None and self.process.stdout is not None
            for line in self.process.stdout:
                self._tail.append(line.rstrip("\n"))
                if sink:
                    sink.write(line)
                    sink.flush()
                match = _LISTENING.search(line)
                if match and not self._listening.is_set() and match.group(1) == self.name:
                    self.address = match.group(2)
                    self._listening.set()
        finally:
            if sink:
                sink.close()

    def wait_listening(self, timeout_s: float) -> str:
        """Blocks until the service announced its address; returns it."""
        deadline = time.monotonic() + timeout_s
        while not self._listening.wait(0.1):
            if self.process is not None and self.process.poll() is not None:
                raise ServiceStartError(
                    f"{self.name} exited with status {self.process.returncode}: {self.first_error_line()}\n"
                    f"{self.output_tail()}"
                )
            if time.monotonic() > deadline:
                raise ServiceStartError(
                    f"{self.name} did not start listening in {timeout_s:.0f}s:\n{self.output_tail()}"
                )
        assert self.address is not None
        return self.address

    def output_tail(self, lines: int = 40) -> str:
        return "\n".join(list(self._tail)[-lines:])

    def first_error_line(self) -> str:
        """The first line of its recent output that reports an error (else its last line)."""
        lines = list(self._tail)
        for line in lines:
            if _ERROR_LINE.search(line):
                return line.strip()
        return lines[-1].strip() if lines else "(no output)"

    def restart(self) -> None:
        """Starts the same command again, on the address it announced before (clients, workers and
        the scheduler keep dialling that one)."""
        if self.address is not None and "--port" in self.args:
            index = self.args.index("--port") + 1
            self.args = [*self.args[:index], self.address.rpartition(":")[2], *self.args[index + 1 :]]
        self._listening = threading.Event()
        self.start()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float | None = None) -> None:
        """SIGTERM, then SIGKILL after `timeout_s` (default: its stop_timeout_s, room for its drain)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(self.stop_timeout_s if timeout_s is None else timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    def kill(self) -> None:
        """SIGKILL at once (failure tests)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)


def wait_serving(
    address: str,
    timeout_s: float,
    service: str = "",
    tls: TlsFiles = PLAINTEXT,
    server_role: str = "",
    give_up: Callable[[], str] | None = None,
) -> None:
    """Blocks until grpc.health.v1 at `address` says SERVING; `give_up` returns a reason to stop
    waiting at once (e.g. the service said it will never serve)."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    with open_channel(address, tls, server_role=server_role) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            reason = give_up() if give_up is not None else ""
            if reason:
                raise ServiceStartError(reason)
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
            except grpc.RpcError as err:
                last = f"{err.code().name}: {err.details()}"
            time.sleep(0.1)
    raise ServiceStartError(f"{address} not SERVING after {timeout_s:.0f}s (last: {last})")


def stop_grace_s(service: str, args: list[str]) -> float:
    """How long `service` started with flags `args` may take from SIGTERM to exit: the drain_timeout_s
    of the config it resolves from those flags (file and flags, as its own main() does) plus
    STOP_MARGIN_S. A config it will refuse anyway gets the schema default."""
    from infermesh_shared.config import ConfigError
    from infermesh_shared.config.loader import resolve_config
    from infermesh_shared.config.schema import defaults, load_schema

    try:
        drain_s = resolve_config(service, args).drain_timeout_s
    except ConfigError:
        drain_s = defaults(load_schema(service))["drain_timeout_s"]
    return float(drain_s) + STOP_MARGIN_S


@dataclass
class ClusterSpec:
    """What to start: scheduler replicas, each with its own worker group, and frontends in front."""

    model_path: Path
    frontend_port: int = 0
    tp_size: int = 1
    pp_size: int = 1
    # Scheduler replicas; each gets its own tp·pp workers, the frontends list them all.
    replicas: int = 1
    num_frontends: int = 1
    host: str = "127.0.0.1"
    scheduler_args: list[str] = field(default_factory=list)
    worker_args: list[str] = field(default_factory=list)
    frontend_args: list[str] = field(default_factory=list)
    log_dir: Path | None = None
    env: dict[str, str] | None = None
    start_timeout_s: float = 180.0
    # Mutual TLS between the services with a throw-away CA written here; None = plaintext.
    tls_dir: Path | None = None


class LocalCluster:
    """Starts and stops scheduler replicas, their tp·pp workers and the frontends, each in its own
    process. Replica 0 logs to scheduler.log, replica r > 0 to scheduler-r.log; workers are numbered
    across replicas (worker-0 ... worker-(replicas·tp·pp - 1)), replica r owning the r-th run of tp·pp."""

    def __init__(self, spec: ClusterSpec, on_stage: Callable[[str], None] | None = None) -> None:
        self.spec = spec
        # Told one line per start-up stage (`infermesh up` prints them).
        self._on_stage = on_stage or (lambda line: None)
        self.schedulers: list[ServiceProcess] = []
        self.workers: list[ServiceProcess] = []
        self.frontends: list[ServiceProcess] = []
        self._role_tls: dict[str, TlsFiles] = {}

    def role_tls(self, role: str) -> TlsFiles:
        """The TLS files of `role` (plaintext when the cluster runs without TLS)."""
        return self._role_tls.get(role, PLAINTEXT)

    def _tls_args(self, role: str) -> list[str]:
        tls = self._role_tls.get(role)
        if tls is None:
            return []
        return [
            *("--tls-cert-file", tls.cert_file),
            *("--tls-key-file", tls.key_file),
            *("--tls-ca-file", tls.ca_file),
        ]

    def _write_certs(self) -> None:
        from infermesh_cli.cluster_certs import write_cluster_certs

        assert self.spec.tls_dir is not None
        host = self.spec.host
        # A wildcard bind makes workers advertise this machine's name, which the scheduler dials.
        hosts = [socket.getfqdn()] if host in ("0.0.0.0", "::") else [host]
        for role, files in write_cluster_certs(self.spec.tls_dir, hosts, days=30).items():
            self._role_tls[role] = files.as_tls()

    @property
    def frontend_address(self) -> str:
        assert self.frontends and self.frontends[0].address
        return self.frontends[0].address

    @property
    def scheduler(self) -> ServiceProcess | None:
        """Replica 0's scheduler."""
        return self.schedulers[0] if self.schedulers else None

    @property
    def scheduler_address(self) -> str:
        return self.scheduler_addresses[0]

    @property
    def scheduler_addresses(self) -> list[str]:
        assert self.schedulers and all(s.address for s in self.schedulers)
        return [s.address for s in self.schedulers]  # type: ignore[misc]

    def replica_workers(self, replica: int) -> list[ServiceProcess]:
        """The workers of scheduler replica `replica`."""
        size = self.spec.tp_size * self.spec.pp_size
        return self.workers[replica * size : (replica + 1) * size]

    def _log_path(self, name: str) -> Path | None:
        if self.spec.log_dir is None:
            return None
        self.spec.log_dir.mkdir(parents=True, exist_ok=True)
        return self.spec.log_dir / f"{name}.log"

    def start(self) -> LocalCluster:
        spec = self.spec
        if spec.replicas < 1:
            raise ValueError(f"replicas must be at least 1, got {spec.replicas}")
        if spec.tls_dir is not None and not self._role_tls:
            self._write_certs()
        group_size = spec.tp_size * spec.pp_size
        try:
            # Every replica loads its model at once: start all schedulers, then all workers.
            for replica in range(spec.replicas):
                self._on_stage(f"starting {self._replica_label(replica)}")
                self.schedulers.append(
                    self._spawn(
                        "scheduler",
                        "infermesh_scheduler",
                        [
                            *("--host", spec.host, "--port", "0"),
                            *("--model-path", str(spec.model_path)),
                            *("--tp-size", str(spec.tp_size), "--pp-size", str(spec.pp_size)),
                            *("--num-workers", str(group_size)),
                            *self._tls_args("scheduler"),
                            *spec.scheduler_args,
                        ],
                        log_name="scheduler" if replica == 0 else f"scheduler-{replica}",
                    )
                )
            for replica, scheduler in enumerate(self.schedulers):
                address = scheduler.wait_listening(spec.start_timeout_s)
                self._on_stage(f"{self._replica_label(replica)} listening on {address}")
            for replica in range(spec.replicas):
                self._on_stage(f"starting {group_size} worker(s) of {self._replica_label(replica)}")
                self.start_workers(group_size, replica=replica)
            for replica, scheduler in enumerate(self.schedulers):
                self._on_stage(
                    f"workers listening; waiting for the worker group of {self._replica_label(replica)} "
                    "to load the model"
                )
                # Any cluster certificate may ask the scheduler's health; the launcher holds the frontend's.
                wait_serving(
                    scheduler.address or "",
                    spec.start_timeout_s,
                    tls=self.role_tls("frontend"),
                    server_role="scheduler",
                    give_up=self._scheduler_refusal,
                )
                self._on_stage(f"worker group of {self._replica_label(replica)} ready")
            for i in range(spec.num_frontends):
                self._on_stage("starting the frontend")
                self.start_frontend(port=spec.frontend_port if i == 0 else 0, index=i)
            return self
        except BaseException:
            self.stop()
            raise

    def _replica_label(self, replica: int) -> str:
        return "scheduler" if self.spec.replicas == 1 else f"scheduler-{replica}"

    def _scheduler_refusal(self) -> str:
        """Why the scheduler will never serve ('refusing to serve', a dead service), or ''."""
        for scheduler in self.schedulers:
            for line in scheduler.output_tail(200).splitlines():
                if "refusing to serve" in line:
                    return "scheduler " + line[line.index("refusing to serve") :]
        for service in [*self.schedulers, *self.workers]:
            if service is not None and service.process is not None and service.process.poll() is not None:
                return (
                    f"{service.name} exited with status {service.process.returncode}: "
                    f"{service.first_error_line()}"
                )
        return ""

    def start_workers(self, count: int, replica: int = 0) -> list[ServiceProcess]:
        started = []
        for _ in range(count):
            index = len(self.workers)
            worker = self._spawn(
                "worker",
                "infermesh_worker",
                [
                    "--host",
                    self.spec.host,
                    "--port",
                    "0",
                    "--scheduler-address",
                    self.scheduler_addresses[replica],
                    "--worker-name",
                    f"worker-{index}",
                    *self._tls_args("worker"),
                    *self.spec.worker_args,
                ],
                log_name=f"worker-{index}",
            )
            self.workers.append(worker)
            started.append(worker)
        for worker in started:
            worker.wait_listening(self.spec.start_timeout_s)
        return started

    def start_frontend(self, port: int = 0, index: int | None = None) -> ServiceProcess:
        index = len(self.frontends) if index is None else index
        frontend = self._spawn(
            "frontend",
            "infermesh_frontend",
            [
                "--host",
                self.spec.host,
                "--port",
                str(port),
                "--model-path",
                str(self.spec.model_path),
                "--scheduler-addresses",
                ",".join(self.scheduler_addresses),
                *self._tls_args("frontend"),
                *self.spec.frontend_args,
            ],
            log_name=f"frontend-{index}",
        )
        self.frontends.append(frontend)
        address = frontend.wait_listening(self.spec.start_timeout_s)
        wait_serving(address, self.spec.start_timeout_s)
        return frontend

    def _spawn(self, name: str, module: str, args: list[str], log_name: str | None = None) -> ServiceProcess:
        service = ServiceProcess(
            name=name,
            args=[sys.executable, "-m", module, *args],
            env=self.spec.env,
            log_path=self._log_path(log_name or name),
            stop_timeout_s=stop_grace_s(name, args),
        )
        service.start()
        return service

    def stop(self) -> None:
        """Frontends first (they drain while the services behind them still run), then workers, then
        the schedulers; each gets its drain_timeout_s plus a margin before it is killed."""
        for service in [*self.frontends, *self.workers, *self.schedulers]:
            service.stop()

    def kill(self) -> None:
        """SIGKILL to every service at once (a second Ctrl-C)."""
        for service in [*self.frontends, *self.workers, *self.schedulers]:
            service.kill()

    def __enter__(self) -> LocalCluster:
        # `with LocalCluster(spec).start() as c:` must not start a second cluster beside the first.
        return self if self.schedulers else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""Scheduler replicas (each a scheduler process with its own worker) registered in a real Redis,
and frontends that find them there: the processes the routing e2e tests run against."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from infermesh_cli.local_cluster import ServiceProcess, wait_serving

START_TIMEOUT_S = 120.0
# Short lease so a killed replica leaves discovery quickly; short poll/health intervals so
# frontends notice within a fraction of a second.
REDIS_TTL_MS = 1500
FRONTEND_POLL_MS = 100
FRONTEND_HEALTH_MS = 500


@dataclass
class Replica:
    """One scheduler and its worker."""

    name: str
    scheduler: ServiceProcess
    worker: ServiceProcess
    address: str
    port: int

    def alive(self) -> bool:
        return self.scheduler.alive() and self.worker.alive()


@dataclass
class ReplicaCluster:
    """Starts and stops replicas and frontends; every process is stopped by stop()."""

    model_dir: Path
    log_dir: Path
    redis_url: str
    scheduler_args: list[str] = field(default_factory=list)
    replicas: dict[str, Replica] = field(default_factory=dict)
    frontends: list[ServiceProcess] = field(default_factory=list)
    _spawned: list[ServiceProcess] = field(default_factory=list)

    def _spawn(self, name: str, module: str, args: list[str]) -> ServiceProcess:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        service = ServiceProcess(
            name=name.split("-")[0],
            args=[sys.executable, "-m", module, *args],
            log_path=self.log_dir / f"{name}.log",
        )
        self._spawned.append(service)
        service.start()
        return service

    def start_replica(self, name: str, port: int = 0) -> Replica:
        """Starts scheduler `name` (on `port`, 0 = any) registered in Redis, then its worker;
        returns once the scheduler is SERVING."""
        scheduler = self._spawn(
            f"scheduler-{name}",
            "infermesh_scheduler",
            [
                "--host", "127.0.0.1", "--port", str(port), "--model-path", str(self.model_dir),
                "--redis-url", self.redis_url, "--redis-ttl-ms", str(REDIS_TTL_MS),
                "--service-name", f"scheduler-{name}", *self.scheduler_args,
            ],
        )  # fmt: skip
        address = scheduler.wait_listening(START_TIMEOUT_S)
        worker = self._spawn(
            f"worker-{name}",
            "infermesh_worker",
            [
                "--host", "127.0.0.1", "--port", "0", "--scheduler-address", address,
                "--worker-name", f"worker-{name}", "--num-threads", "1",
            ],
        )  # fmt: skip
        worker.wait_listening(START_TIMEOUT_S)
        wait_serving(address, START_TIMEOUT_S)
        replica = Replica(name, scheduler, worker, address, int(address.rsplit(":", 1)[1]))
        self.replicas[name] = replica
        return replica

    def kill_replica(self, name: str) -> Replica:
        """SIGKILLs the replica's scheduler and worker (no deregistration: a crash)."""
        replica = self.replicas[name]
        replica.scheduler.kill()
        replica.worker.kill()
        return replica

    def start_frontend(self, dispatch_policy: str, *extra_args: str, wait_ready: bool = True) -> str:
        """Starts a frontend that discovers the schedulers in Redis; returns its address once
        SERVING (or once listening, when not `wait_ready`)."""
        index = len(self.frontends)
        frontend = self._spawn(
            f"frontend-{index}",
            "infermesh_frontend",
            [
                "--host", "127.0.0.1", "--port", "0", "--model-path", str(self.model_dir),
                "--discovery", "redis", "--redis-url", self.redis_url,
                "--dispatch-policy", dispatch_policy,
                "--load-poll-interval-ms", str(FRONTEND_POLL_MS),
                "--health-check-interval-ms", str(FRONTEND_HEALTH_MS),
                *extra_args,
            ],
        )  # fmt: skip
        self.frontends.append(frontend)
        address = frontend.wait_listening(START_TIMEOUT_S)
        if wait_ready:
            wait_serving(address, START_TIMEOUT_S)
        return address

    def stop_frontends(self) -> None:
        for frontend in self.frontends:
            frontend.stop()
        self.frontends.clear()

    def stop(self) -> None:
        """Frontends first, then workers, then schedulers (which deregister from Redis)."""
        ordered = sorted(self._spawned, key=lambda s: {"frontend": 0, "worker": 1}.get(s.name, 2))
        for service in ordered:
            service.stop()

"""`infermesh up` on the demo model: serves, answers `infermesh generate`, stops all on SIGTERM,
and leaves nothing running even when it is killed outright."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.harness import build_served_model
from tests.e2e.up_cluster import up_cluster

pytestmark = pytest.mark.e2e


@dataclass
class RunningUp:
    process: subprocess.Popen
    address: str
    services: list[int]
    env: dict[str, str]


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


@contextmanager
def running_up(tmp_path: Path) -> Iterator[RunningUp]:
    """`infermesh up` on the demo model in a fresh cache, until it announced its frontend."""
    cache = {"INFERMESH_CACHE": str(tmp_path / "cache")}
    with up_cluster(tmp_path, "--http-port", "0", env=cache) as cluster:
        services = _children(cluster.process.pid)
        assert len(services) == 3, f"expected scheduler, worker and frontend processes, got {services}"
        yield RunningUp(cluster.process, cluster.frontend_address, services, cluster.env)


def _generate(running: RunningUp, *flags: str) -> str:
    argv = ["generate", "--address", running.address, "--max-tokens", "8", "--temperature", "0", *flags]
    result = subprocess.run(
        [sys.executable, "-m", "infermesh_cli", *argv, "Hello, infermesh"],
        capture_output=True,
        text=True,
        timeout=120,
        env=running.env,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_up_serves_the_demo_model_and_stops_cleanly(tmp_path):
    with running_up(tmp_path) as running:
        text = _generate(running)
        assert text, "generate printed no text"
        assert _generate(running, "--stream") == text
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(60) == 0
        assert not [pid for pid in running.services if _alive(pid)]
    # The demo model is cached: written once, reused by the next start.
    assert (tmp_path / "cache" / "infermesh-demo-llama-v1" / "model.safetensors").is_file()


def test_services_die_with_a_killed_launcher(tmp_path):
    # SIGKILL gives `up` no chance to stop its services: the kernel must do it (PR_SET_PDEATHSIG).
    with running_up(tmp_path) as running:
        running.process.kill()
        running.process.wait(10)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_alive(pid) for pid in running.services):
        time.sleep(0.1)
    assert not [pid for pid in running.services if _alive(pid)], "services outlived their launcher"


def _drain(process: subprocess.Popen) -> list[str]:
    """Collects the launcher's further output on a thread (so its pipe never fills)."""
    lines: list[str] = []

    def pump() -> None:
        for line in process.stdout:
            lines.append(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _service_pid(running: RunningUp, module: str) -> int:
    for pid in _children(running.process.pid):
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            if module.encode() in cmdline.read():
                return pid
    raise AssertionError(f"no {module} process under up")


def test_up_restarts_a_killed_worker_and_keeps_serving(tmp_path):
    with running_up(tmp_path) as running:
        before = _generate(running)
        output = _drain(running.process)
        os.kill(_service_pid(running, "infermesh_worker"), signal.SIGKILL)
        deadline = time.monotonic() + 60
        while not any("worker-0 exited (status -9); restarting" in line for line in output):
            assert time.monotonic() < deadline, "".join(output)
            time.sleep(0.1)
        # The restarted worker registers again and the group re-forms; the answer is the same.
        assert _generate(running) == before
        assert running.process.poll() is None, "".join(output)
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(60) == 0


def test_up_exits_at_once_with_the_reason_when_the_model_is_refused(tmp_path):
    model = build_served_model("llama", tmp_path / "mixtral")
    config = json.loads((model / "config.json").read_text())
    config.update(architectures=["MixtralForCausalLM"], model_type="mixtral", num_local_experts=4)
    (model / "config.json").write_text(json.dumps(config))
    result = subprocess.run(
        [sys.executable, "-m", "infermesh_cli", "up", "--port", "0", "--model-path", str(model),
         "--log-dir", str(tmp_path / "logs")],
        capture_output=True,
        text=True,
        timeout=90,  # far below the 180 s start-up timeout it used to wait out
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert result.returncode != 0
    assert "MixtralForCausalLM" in result.stderr and "not supported" in result.stderr, result.stderr

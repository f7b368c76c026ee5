"""`infermesh up` on the demo model: serves, answers `infermesh generate`, stops all on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.e2e


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_up_serves_the_demo_model_and_stops_cleanly(tmp_path):
    env = {**os.environ, "INFERMESH_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "infermesh_cli",
            "up",
            "--port",
            "0",
            "--log-dir",
            str(tmp_path / "logs"),
            "--worker-arg=--num-threads=1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines: list[str] = []
    try:
        address = None
        deadline = time.monotonic() + 240
        assert up.stdout is not None
        while address is None and time.monotonic() < deadline:
            line = up.stdout.readline()
            if not line:
                break
            lines.append(line)
            match = re.match(r"frontend listening on (\S+:\d+)$", line.strip())
            if match:
                address = match.group(1)
        assert address, "".join(lines)
        services = _children(up.pid)
        assert len(services) == 3, f"expected scheduler, worker and frontend processes, got {services}"

        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "infermesh_cli",
                "generate",
                "--address",
                address,
                "--max-tokens",
                "8",
                "--temperature",
                "0",
                "Hello, infermesh",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip(), "generate printed no text"

        streamed = subprocess.run(
            [
                sys.executable,
                "-m",
                "infermesh_cli",
                "generate",
                "--address",
                address,
                "--max-tokens",
                "8",
                "--temperature",
                "0",
                "--stream",
                "Hello, infermesh",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert streamed.returncode == 0, streamed.stderr
        assert streamed.stdout.strip() == result.stdout.strip()

        up.send_signal(signal.SIGTERM)
        assert up.wait(60) == 0
        for pid in services:
            assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
        # The demo model is cached: written once, reused by the next start.
        assert (tmp_path / "cache" / "infermesh-demo-llama-v1" / "model.safetensors").is_file()
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(10)


def test_services_die_with_a_killed_launcher(tmp_path):
    # SIGKILL gives `up` no chance to stop its services: the kernel must do it (PR_SET_PDEATHSIG).
    env = {**os.environ, "INFERMESH_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "infermesh_cli",
            "up",
            "--port",
            "0",
            "--log-dir",
            str(tmp_path / "logs"),
            "--worker-arg=--num-threads=1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 240
        assert up.stdout is not None
        while time.monotonic() < deadline:
            line = up.stdout.readline()
            if not line or line.startswith("frontend listening on"):
                break
        services = _children(up.pid)
        assert len(services) == 3
    finally:
        up.kill()
        up.wait(10)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_alive(pid) for pid in services):
        time.sleep(0.1)
    assert not [pid for pid in services if _alive(pid)], "services outlived their launcher"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False

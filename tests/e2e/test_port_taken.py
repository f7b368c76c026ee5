"""A service started on a port that is already taken exits 1 with one line naming the port.

gRPC servers used to bind with SO_REUSEPORT, so a second frontend or worker on a taken port
"succeeded" and the two silently shared the traffic. The port holder here is either a real first
frontend or a socket that itself set SO_REUSEPORT (what an older infermesh process would hold):
both would let a reuse-port bind through, so these tests fail without `grpc.so_reuseport = 0`.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from infermesh_cli.demo_tokenizer import build_demo_tokenizer, write_tokenizer_files

from tests.free_port import free_port
from tests.model_factory import build_random_model

pytestmark = [pytest.mark.e2e]

EXIT_TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("port-taken-model")
    build_random_model("llama", out, vocab_size=512)
    write_tokenizer_files(out, build_demo_tokenizer(512))
    return out


@pytest.fixture
def reuseport_holder() -> Iterator[int]:
    """A port held by a listening socket that allows SO_REUSEPORT sharing."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def _run_to_exit(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=EXIT_TIMEOUT_S)


def _assert_refused(result: subprocess.CompletedProcess[str], port: int) -> None:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "listening on" not in result.stdout
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.stderr
    assert f"127.0.0.1:{port}" in lines[0] and "in use" in lines[0], lines[0]


def _frontend_command(model_dir: Path, port: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "infermesh_frontend",
        "--model-path", str(model_dir),
        "--scheduler-addresses", f"127.0.0.1:{free_port()}",
        "--port", str(port),
        "--log-level", "warn",
        *extra,
    ]  # fmt: skip


def test_second_frontend_on_a_taken_port_exits_1(model_dir: Path) -> None:
    port = free_port()
    first = subprocess.Popen(
        _frontend_command(model_dir, port), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line = first.stdout.readline()
        assert line.startswith(f"frontend listening on 127.0.0.1:{port}"), (line, first.poll())
        _assert_refused(_run_to_exit(_frontend_command(model_dir, port)), port)
        assert first.poll() is None, "the first frontend must keep serving"
    finally:
        first.terminate()
        first.wait(10)


def test_frontend_http_port_taken_exits_1(model_dir: Path, reuseport_holder: int) -> None:
    command = _frontend_command(model_dir, 0, "--http-port", str(reuseport_holder))
    _assert_refused(_run_to_exit(command), reuseport_holder)


def test_worker_on_a_taken_port_exits_1(reuseport_holder: int) -> None:
    command = [
        sys.executable, "-m", "infermesh_worker",
        "--port", str(reuseport_holder),
        "--scheduler-address", f"127.0.0.1:{free_port()}",
        "--device", "cpu",
        "--kv-cache-memory-bytes", "1000000",
        "--log-level", "warn",
    ]  # fmt: skip
    _assert_refused(_run_to_exit(command), reuseport_holder)


def test_scheduler_on_a_taken_port_exits_1(model_dir: Path, reuseport_holder: int) -> None:
    command = [
        sys.executable, "-m", "infermesh_scheduler",
        "--model-path", str(model_dir),
        "--port", str(reuseport_holder),
        "--log-level", "warn",
    ]  # fmt: skip
    _assert_refused(_run_to_exit(command), reuseport_holder)


@pytest.mark.parametrize("service", ["frontend", "scheduler", "worker"])
def test_plaintext_on_a_non_loopback_host_is_refused_unless_explicit(model_dir: Path, service: str) -> None:
    # Nothing is bound when the refusal works; 0.0.0.0 with port 0 never collides.
    common = ["--host", "0.0.0.0", "--port", "0", "--log-level", "warn"]
    commands = {
        "frontend": _frontend_command(model_dir, 0, "--host", "0.0.0.0"),
        "scheduler": [sys.executable, "-m", "infermesh_scheduler", "--model-path", str(model_dir), *common],
        "worker": [
            sys.executable, "-m", "infermesh_worker", *common,
            "--scheduler-address", f"127.0.0.1:{free_port()}", "--kv-cache-memory-bytes", "1000000",
        ],
    }  # fmt: skip
    result = _run_to_exit(commands[service])
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "not loopback, without TLS" in result.stderr and "insecure_plaintext" in result.stderr
    assert "listening on" not in result.stdout

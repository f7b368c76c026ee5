"""`infermesh up` as a test fixture: the process, its frontend address, and the addresses its
services announced in their logs (for probes that talk to the scheduler or a worker directly)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
from infermesh.v1 import frontend_pb2, frontend_pb2_grpc
from infermesh_shared.grpc_transport import PLAINTEXT, TlsFiles, open_channel

START_TIMEOUT_S = 240.0


@dataclass
class UpCluster:
    process: subprocess.Popen
    frontend_address: str
    log_dir: Path
    env: dict[str, str]

    @property
    def cert_dir(self) -> Path:
        return self.log_dir / "certs"

    def role_tls(self, role: str) -> TlsFiles:
        d = self.cert_dir
        return TlsFiles(str(d / f"{role}.pem"), str(d / f"{role}-key.pem"), str(d / "ca.pem"))

    def announced(self, log_name: str, service: str) -> str:
        """The address `service` printed in logs/<log_name>.log."""
        text = (self.log_dir / f"{log_name}.log").read_text()
        match = re.search(rf"{service} listening on (\S+:\d+)", text)
        assert match, text[-2000:]
        return match.group(1)

    def greedy(self, text: str, max_tokens: int = 12, tls: TlsFiles = PLAINTEXT, metadata=()) -> list[int]:
        """Token ids of a greedy completion through the frontend's gRPC port."""
        with open_channel(self.frontend_address, tls) as channel:
            stub = frontend_pb2_grpc.FrontendServiceStub(channel)
            sampling = frontend_pb2.ClientSamplingParams(
                max_tokens=max_tokens, temperature=0, ignore_eos=True
            )
            response = stub.Generate(
                frontend_pb2.GenerateRequest(input=frontend_pb2.GenerateInput(text=text, sampling=sampling)),
                timeout=120,
                metadata=metadata,
            )
        return list(response.completions[0].token_ids)


@contextmanager
def up_cluster(tmp_path: Path, *up_args: str, env: dict[str, str] | None = None) -> Iterator[UpCluster]:
    """`infermesh up` on the demo model until its frontend answers; SIGKILL-safe cleanup."""
    run_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    log_dir = tmp_path / "logs"
    argv = ["up", "--port", "0", "--log-dir", str(log_dir), "--worker-arg=--num-threads=1", *up_args]
    up = subprocess.Popen(
        [sys.executable, "-m", "infermesh_cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=run_env,
    )
    try:
        lines: list[str] = []
        address = None
        deadline = time.monotonic() + START_TIMEOUT_S
        assert up.stdout is not None
        while address is None and time.monotonic() < deadline:
            line = up.stdout.readline()
            if not line:
                break
            lines.append(line)
            match = re.match(r"frontend listening on (\S+:\d+)$", line.strip())
            address = match.group(1) if match else None
        assert address, "".join(lines)
        yield UpCluster(up, address, log_dir, run_env)
    finally:
        if up.poll() is None:
            up.terminate()
            try:
                up.wait(30)
            except subprocess.TimeoutExpired:
                up.kill()
                up.wait(10)


def rpc_code(call) -> grpc.StatusCode:
    """The status code `call()` ends with (OK when it returns)."""
    try:
        result = call()
        if hasattr(result, "__iter__") and not hasattr(result, "ListFields"):
            list(result)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK

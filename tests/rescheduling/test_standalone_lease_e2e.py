"""Two infermesh-rescheduler processes on one Redis lease (real redis-server, real processes):
exactly one is active; stopping it (SIGTERM) hands the lease to the other at once. Each answers
gRPC health on its own port and refuses a config it cannot honour before it starts; under mutual
TLS its drain RPC answers the rescheduler role only."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from infermesh_cli.local_cluster import ServiceProcess

from tests.free_port import free_port
from tests.routing.redis_server import running_redis_server

pytestmark = [pytest.mark.e2e, pytest.mark.multiproc]


def _rescheduler(redis_url: str, metrics_port: int) -> ServiceProcess:
    process = ServiceProcess(
        name="rescheduler",
        args=[
            sys.executable,
            "-m",
            "infermesh_frontend.rescheduling.standalone",
            "--port",
            "0",
            "--metrics-port",
            str(metrics_port),
            # Nothing listens there: the loop reads no load and moves nothing, the lease is what is tested.
            "--scheduler-addresses",
            "127.0.0.1:1",
            "--rescheduling-policies",
            "decode_load,neutral_failover",
            "--rescheduling-interval-ms",
            "50",
            "--llumlet-grpc-timeout-seconds",
            "0.2",
            "--rescheduling-lease-redis-url",
            redis_url,
            "--rescheduling-lease-ttl-ms",
            "600",
        ],
    )
    process.start()
    process.wait_listening(60)
    return process


def _active(metrics_port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith("infermesh_rescheduler_active"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no infermesh_rescheduler_active in /metrics")


def _wait(condition, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_exactly_one_standalone_rescheduler_is_active_and_a_stop_hands_over(tmp_path):
    with running_redis_server(tmp_path / "redis") as url:
        ports = [free_port(), free_port()]
        first = _rescheduler(url, ports[0])
        second = None
        try:
            _wait(lambda: _active(ports[0]) == 1)
            second = _rescheduler(url, ports[1])
            time.sleep(1.0)  # more than one lease lifetime: the second had every chance to take it
            assert (_active(ports[0]), _active(ports[1])) == (1, 0)
            with grpc.insecure_channel(second.address) as channel:
                status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert status.status == health_pb2.HealthCheckResponse.SERVING
            first.stop()
            _wait(lambda: _active(ports[1]) == 1, timeout_s=5)
        finally:
            for process in (first, second):
                if process is not None:
                    process.stop()


def test_a_standalone_rescheduler_refuses_policies_that_need_pd_roles():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "infermesh_frontend.rescheduling.standalone",
            "--scheduler-addresses",
            "127.0.0.1:1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "prefill_failover, decode_failover" in result.stderr and "issue 15" in result.stderr


def test_under_mutual_tls_only_the_rescheduler_role_may_drain(tmp_path):
    from infermesh.v1 import rescheduler_pb2, rescheduler_pb2_grpc
    from infermesh_cli.cluster_certs import write_cluster_certs
    from infermesh_shared.grpc_transport import TlsFiles, open_channel

    certs = write_cluster_certs(tmp_path / "certs")
    ca = str(tmp_path / "certs" / "ca.pem")

    def tls(role: str) -> TlsFiles:
        return certs[role].as_tls()

    mine = tls("rescheduler")
    process = ServiceProcess(
        name="rescheduler",
        args=[
            sys.executable,
            "-m",
            "infermesh_frontend.rescheduling.standalone",
            "--port",
            "0",
            "--scheduler-addresses",
            "127.0.0.1:1",
            "--rescheduling-policies",
            "decode_load",
            "--tls-cert-file",
            mine.cert_file,
            "--tls-key-file",
            mine.key_file,
            "--tls-ca-file",
            ca,
        ],
    )
    process.start()
    try:
        address = process.wait_listening(60)
        request = rescheduler_pb2.DrainReplicaRequest(replica_address="127.0.0.1:9")

        def drain(role: str) -> grpc.StatusCode:
            with open_channel(address, tls(role), server_role="rescheduler") as channel:
                try:
                    rescheduler_pb2_grpc.ReschedulerServiceStub(channel).DrainReplica(request, timeout=10)
                except grpc.RpcError as error:
                    return error.code()
            return grpc.StatusCode.OK

        assert drain("frontend") == grpc.StatusCode.PERMISSION_DENIED
        assert drain("worker") == grpc.StatusCode.PERMISSION_DENIED
        # Allowed in, then refused: the replica is not one discovery knows.
        assert drain("rescheduler") == grpc.StatusCode.NOT_FOUND
    finally:
        process.stop()

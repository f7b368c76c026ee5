"""`infermesh up` defaults: mutual TLS with roles on every internal hop, and worker admission.

Probes an attacker on the same network would try: a plaintext client and a certificate from
another CA against the scheduler and the worker; a cluster certificate of the wrong role; a
second registration under a live worker's name.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from infermesh.v1 import scheduler_pb2, scheduler_pb2_grpc, worker_pb2, worker_pb2_grpc
from infermesh_cli.cluster_certs import write_cluster_certs
from infermesh_shared.grpc_transport import PLAINTEXT, TlsFiles, open_channel

from tests.e2e.up_cluster import UpCluster, rpc_code, up_cluster
from tests.free_port import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PROMPT = "Once upon a time in a small village"
CALL_TIMEOUT_S = 10


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpCluster]:
    with up_cluster(tmp_path_factory.mktemp("mtls-up")) as running:
        yield running


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TlsFiles]:
    """Certificates of every role from another CA (trusting that CA, not the cluster's)."""
    out = tmp_path_factory.mktemp("foreign-ca")
    return {role: files.as_tls() for role, files in write_cluster_certs(out).items()}


def _scheduler_calls(address: str, tls: TlsFiles):
    channel = open_channel(address, tls)
    stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
    submit = scheduler_pb2.SubmitRequest(request_id="probe", prompt_token_ids=[1, 2, 3])
    register = scheduler_pb2.RegisterWorkerRequest(
        address=f"127.0.0.1:{free_port()}", device="cpu", worker_name="intruder"
    )
    return channel, {
        "Submit": lambda: stub.Submit(submit, timeout=CALL_TIMEOUT_S),
        "RegisterWorker": lambda: stub.RegisterWorker(register, timeout=CALL_TIMEOUT_S),
    }


def _worker_calls(address: str, tls: TlsFiles):
    channel = open_channel(address, tls)
    stub = worker_pb2_grpc.WorkerServiceStub(channel)
    return channel, {
        "Execute": lambda: stub.Execute(worker_pb2.ExecuteRequest(), timeout=CALL_TIMEOUT_S),
        "LoadModel": lambda: stub.LoadModel(
            worker_pb2.LoadModelRequest(model_path="/tmp/elsewhere", config_overrides_json='{"x":1}'),
            timeout=CALL_TIMEOUT_S,
        ),
    }


def _codes(cluster: UpCluster, scheduler_tls: TlsFiles, worker_tls: TlsFiles) -> dict[str, grpc.StatusCode]:
    codes = {}
    s_channel, s_calls = _scheduler_calls(cluster.announced("scheduler", "scheduler"), scheduler_tls)
    w_channel, w_calls = _worker_calls(cluster.announced("worker-0", "worker"), worker_tls)
    with s_channel, w_channel:
        for name, call in {**s_calls, **w_calls}.items():
            codes[name] = rpc_code(call)
    return codes


def test_plaintext_client_is_refused_everywhere(cluster: UpCluster) -> None:
    codes = _codes(cluster, PLAINTEXT, PLAINTEXT)
    print("plaintext:", {k: v.name for k, v in codes.items()})
    assert all(code == grpc.StatusCode.UNAVAILABLE for code in codes.values()), codes


@pytest.mark.parametrize("role", ["frontend", "worker", "scheduler"])
def test_certificate_from_another_ca_is_refused_everywhere(
    cluster: UpCluster, foreign: dict[str, TlsFiles], role: str
) -> None:
    # Even trusting the cluster's CA for the server side, the client's foreign cert is refused.
    cert = foreign[role]
    trusting = TlsFiles(cert.cert_file, cert.key_file, str(cluster.cert_dir / "ca.pem"))
    codes = _codes(cluster, trusting, trusting)
    print(f"foreign {role}:", {k: v.name for k, v in codes.items()})
    assert all(code == grpc.StatusCode.UNAVAILABLE for code in codes.values()), codes


def test_roles_are_enforced(cluster: UpCluster) -> None:
    worker_cert = cluster.role_tls("worker")
    frontend_cert = cluster.role_tls("frontend")
    codes = {
        "worker->Submit": _codes(cluster, worker_cert, worker_cert)["Submit"],
        "frontend->RegisterWorker": _codes(cluster, frontend_cert, frontend_cert)["RegisterWorker"],
        "frontend->Execute": _codes(cluster, frontend_cert, frontend_cert)["Execute"],
        "worker->LoadModel": _codes(cluster, worker_cert, worker_cert)["LoadModel"],
    }
    print("wrong roles:", {k: v.name for k, v in codes.items()})
    assert all(code == grpc.StatusCode.PERMISSION_DENIED for code in codes.values()), codes


def test_registration_under_a_live_workers_name_does_not_displace_it(cluster: UpCluster) -> None:
    before = cluster.greedy(PROMPT)
    with open_channel(cluster.announced("scheduler", "scheduler"), cluster.role_tls("worker")) as channel:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        request = scheduler_pb2.RegisterWorkerRequest(
            address=f"127.0.0.1:{free_port()}", device="cpu", worker_name="worker-0"
        )
        with pytest.raises(grpc.RpcError) as refused:
            stub.RegisterWorker(request, timeout=CALL_TIMEOUT_S)
    print("squatting registration:", refused.value.code().name, refused.value.details())
    assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "worker-0" in refused.value.details()
    assert cluster.greedy(PROMPT) == before


def test_certs_command_writes_a_ca_and_role_certificates(tmp_path: Path) -> None:
    from cryptography import x509
    from infermesh_cli.__main__ import main

    out = tmp_path / "certs"
    assert main(["certs", "--out", str(out), "--hosts", "scheduler.internal", "10.1.2.3"]) == 0
    ca_before = (out / "ca.pem").read_bytes()
    for role in ("frontend", "scheduler", "worker", "rescheduler"):
        cert = x509.load_pem_x509_certificate((out / f"{role}.pem").read_bytes())
        assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == role
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert "scheduler.internal" in san.get_values_for_type(x509.DNSName)
        assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} >= {"10.1.2.3", "127.0.0.1"}
        assert (out / f"{role}-key.pem").stat().st_mode & 0o077 == 0
    # Rotation keeps the trust anchor.
    assert main(["certs", "--out", str(out), "--reuse-ca"]) == 0
    assert (out / "ca.pem").read_bytes() == ca_before


def _list_services(channel) -> grpc.StatusCode:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    return rpc_code(lambda: list(stub.ServerReflectionInfo(iter([request]), timeout=CALL_TIMEOUT_S)))


def test_reflection_is_off_except_on_the_up_frontend(cluster: UpCluster) -> None:
    frontend_cert = cluster.role_tls("frontend")
    with open_channel(cluster.frontend_address) as channel:
        assert _list_services(channel) == grpc.StatusCode.OK
    with open_channel(cluster.announced("scheduler", "scheduler"), frontend_cert) as channel:
        assert _list_services(channel) == grpc.StatusCode.UNIMPLEMENTED


def test_a_second_scheduler_certificate_of_the_ca_cannot_drive_the_worker(
    cluster: UpCluster, tmp_path: Path
) -> None:
    before = cluster.greedy(PROMPT)
    for name in ("ca.pem", "ca-key.pem"):
        shutil.copy(cluster.cert_dir / name, tmp_path / name)
    other = write_cluster_certs(tmp_path, reuse_ca=True)["scheduler"].as_tls()
    w_channel, w_calls = _worker_calls(cluster.announced("worker-0", "worker"), other)
    with w_channel:
        with pytest.raises(grpc.RpcError) as refused:
            w_calls["Execute"]()
    print("other scheduler -> Execute:", refused.value.code().name, refused.value.details())
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "registered with" in refused.value.details()
    assert cluster.greedy(PROMPT) == before


def test_load_model_cannot_change_the_architecture(cluster: UpCluster) -> None:
    before = cluster.greedy(PROMPT)
    log = (cluster.log_dir / "worker-0.log").read_text()
    model_path = re.search(r"loading (\S+) \(dtype=", log).group(1)
    with open_channel(cluster.announced("worker-0", "worker"), cluster.role_tls("scheduler")) as channel:
        stub = worker_pb2_grpc.WorkerServiceStub(channel)
        request = worker_pb2.LoadModelRequest(
            model_path=model_path, config_overrides_json='{"num_hidden_layers": 1}'
        )
        with pytest.raises(grpc.RpcError) as refused:
            stub.LoadModel(request, timeout=CALL_TIMEOUT_S)
    print("truncating LoadModel:", refused.value.code().name, refused.value.details())
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "num_hidden_layers" in refused.value.details()
    assert cluster.greedy(PROMPT) == before

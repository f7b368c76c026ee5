"""Every infermesh service of deploy/docker-compose.yml (both replicas of the second-replica
profile included) started as a local process with the file's command and environment, a real
Redis for discovery and a real OTLP receiver in Jaeger's place; a request goes through them."""

from __future__ import annotations

import json
import urllib.request
from urllib.parse import urlparse

import pytest
from infermesh.v1 import frontend_pb2
from infermesh_cli.cluster_certs import write_cluster_certs
from infermesh_cli.local_cluster import ServiceProcess, ServiceStartError, wait_serving
from infermesh_shared.discovery import RedisDiscovery

from tests.deploy.compose_local import local_services, process_args
from tests.deploy.deploy_files import DEPLOY, load_compose, parse_service_command
from tests.e2e.harness import build_served_model, frontend_stub
from tests.routing.redis_server import running_redis_server
from tests.telemetry.otlp_collector import OtlpCollector

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

START_TIMEOUT_S = 120.0


def test_compose_services_serve_a_request_as_local_processes(tmp_path) -> None:
    model = build_served_model("llama", tmp_path / "model", hidden_size=32, num_layers=2)
    collector = OtlpCollector()
    started: list[ServiceProcess] = []
    try:
        with running_redis_server(tmp_path / "redis") as redis_url:
            certs = write_cluster_certs(tmp_path / "certs")
            services, translation = local_services(
                load_compose(),
                DEPLOY,
                {"INFERMESH_MODEL_DIR": str(model), "INFERMESH_CERTS_DIR": str(tmp_path / "certs")},
                preset_ports={("redis", 6379): urlparse(redis_url).port, ("jaeger", 4317): collector.port},
            )
            assert {s.name for s in services} == {
                "scheduler",
                "scheduler-b",
                "worker",
                "worker-b",
                "frontend",
            }
            for service in services:
                argv, env = process_args(service)
                process = ServiceProcess(service.kind, argv, env, tmp_path / f"{service.name}.log")
                started.append(process)
                process.start()
                process.wait_listening(START_TIMEOUT_S)
            schedulers = {
                f"127.0.0.1:{translation.port(name, 50051)}" for name in ("scheduler", "scheduler-b")
            }
            # The schedulers answer mTLS only: the test holds the frontend's certificate.
            tls = certs["frontend"].as_tls()
            for address in schedulers:
                wait_serving(address, START_TIMEOUT_S, tls=tls, server_role="scheduler")
                with pytest.raises(ServiceStartError):
                    wait_serving(address, 1.0)  # and refuse a plaintext client
            assert RedisDiscovery(redis_url).resolve() == schedulers
            frontend = f"127.0.0.1:{translation.port('frontend', 50050)}"
            wait_serving(frontend, START_TIMEOUT_S)

            request = frontend_pb2.GenerateInput(
                text="hello compose", sampling=frontend_pb2.ClientSamplingParams(temperature=0, max_tokens=4)
            )
            response = frontend_stub(frontend).Generate(
                frontend_pb2.GenerateRequest(input=request), timeout=60
            )
            assert len(response.completions[0].token_ids) >= 1
            # The published OpenAI-compatible HTTP port answers too.
            models_url = f"http://127.0.0.1:{translation.port('frontend', 8000)}/v1/models"
            with urllib.request.urlopen(models_url, timeout=10) as page:
                assert page.status == 200 and json.loads(page.read())["data"][0]["owned_by"] == "infermesh"

            # Prometheus' targets: every service's metrics port answers.
            for service in services:
                _, options = parse_service_command(service.argv)
                url = f"http://127.0.0.1:{options['metrics_port']}/metrics"
                with urllib.request.urlopen(url, timeout=10) as page:
                    assert page.status == 200 and b"# TYPE" in page.read(), service.name
            # Jaeger's OTLP port received spans from all three kinds of service.
            wanted = {"infermesh-frontend", "infermesh-scheduler", "infermesh-worker"}
            collector.wait_for(lambda spans: wanted <= {span.service_name for span in spans}, timeout_s=30)
    finally:
        for process in reversed(started):
            process.stop()
        collector.stop()


def test_translation_to_local_processes_keeps_the_wiring(tmp_path) -> None:
    services, translation = local_services(
        load_compose(), DEPLOY, {"INFERMESH_MODEL_DIR": str(tmp_path)}, preset_ports={("redis", 6379): 7777}
    )
    by_name = {service.name: parse_service_command(service.argv)[1] for service in services}
    scheduler_b = f"127.0.0.1:{translation.port('scheduler-b', 50051)}"
    assert by_name["scheduler-b"]["advertise_address"] == scheduler_b
    assert by_name["scheduler-b"]["port"] == str(translation.port("scheduler-b", 50051))
    assert by_name["worker-b"]["scheduler_address"] == scheduler_b
    assert by_name["frontend"]["redis_url"] == "redis://127.0.0.1:7777/0"
    assert by_name["frontend"]["model_path"] == str(tmp_path)
    assert all(options["host"] == "127.0.0.1" for options in by_name.values())
    ports = [translation.port(name, port) for name, port in translation.ports]
    assert len(ports) == len(set(ports))
    assert [s.name for s in services].index("worker-b") > [s.name for s in services].index("scheduler-b")

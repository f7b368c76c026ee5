"""deploy/k8s: a Deployment and Service per service, an HPA for the frontend, grpc.health.v1
probes, and infermesh command lines that their schemas accept."""

from __future__ import annotations

from collections import defaultdict

import yaml

from tests.deploy.deploy_files import INFERMESH_COMMANDS, K8S_DIR, parse_service_command


def manifests() -> dict[str, list[dict]]:
    by_kind: dict[str, list[dict]] = defaultdict(list)
    for path in sorted(K8S_DIR.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                by_kind[document["kind"]].append(document)
    return by_kind


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    files = {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


def test_deployments_and_services_per_service() -> None:
    found = manifests()
    deployments = {d["metadata"]["name"]: d for d in found["Deployment"]}
    assert {"frontend", "scheduler", "redis", "jaeger", "prometheus"} <= deployments.keys()
    for deployment in deployments.values():
        selector = deployment["spec"]["selector"]["matchLabels"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), deployment["metadata"]["name"]
    pod_labels = [d["spec"]["template"]["metadata"]["labels"] for d in deployments.values()]
    for service in found["Service"]:
        selector = service["spec"]["selector"]
        assert any(selector.items() <= labels.items() for labels in pod_labels), service["metadata"]["name"]
    service_targets = {s["spec"]["selector"]["app.kubernetes.io/name"] for s in found["Service"]}
    assert {"frontend", "scheduler", "redis", "jaeger", "prometheus"} <= service_targets


def test_infermesh_containers_probe_grpc_health_and_parse() -> None:
    seen = set()
    for deployment in manifests()["Deployment"]:
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            args = container.get("args", [])
            if not args or args[0] not in INFERMESH_COMMANDS:
                continue
            service, options = parse_service_command(args)
            seen.add(service)
            # An mTLS gRPC port cannot be probed by kubelet: the plaintext health-only port is.
            port = int(options.get("health_port") or options["port"])
            assert container["livenessProbe"]["grpc"]["port"] == port, container["name"]
            if service != "worker":
                assert container["readinessProbe"]["grpc"]["port"] == port, container["name"]
            assert container["image"] == f"infermesh/{service}:latest"
    assert seen == {"frontend", "scheduler", "worker"}


def test_frontend_has_a_horizontal_pod_autoscaler() -> None:
    (hpa,) = manifests()["HorizontalPodAutoscaler"]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "frontend")
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    frontend = next(d for d in manifests()["Deployment"] if d["metadata"]["name"] == "frontend")
    # Utilisation targets need CPU requests.
    assert frontend["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"]

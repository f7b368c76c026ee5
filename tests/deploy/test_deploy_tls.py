"""Every infermesh service in deploy/ (compose and k8s) runs with mutual TLS: its command carries
the TLS options with its own role's certificate from a mounted certificate directory, and none
opts out with insecure_plaintext."""

from __future__ import annotations

from collections.abc import Iterator

import yaml

from tests.deploy.deploy_files import INFERMESH_COMMANDS, K8S_DIR, load_compose, parse_service_command


def _compose_commands() -> Iterator[tuple[str, list[str], set[str]]]:
    for name, service in load_compose()["services"].items():
        command = [str(part) for part in service.get("command") or []]
        if command and command[0] in INFERMESH_COMMANDS:
            mounts = {volume["target"] for volume in service.get("volumes", [])}
            yield f"compose {name}", command, mounts


def _k8s_commands() -> Iterator[tuple[str, list[str], set[str]]]:
    for path in sorted(K8S_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "Deployment":
                continue
            for container in doc["spec"]["template"]["spec"]["containers"]:
                args = [str(part) for part in container.get("args", [])]
                if args and args[0] in INFERMESH_COMMANDS:
                    mounts = {mount["mountPath"] for mount in container.get("volumeMounts", [])}
                    yield f"k8s {container['name']}", args, mounts


def test_every_deployed_service_command_carries_its_role_certificate() -> None:
    seen = []
    for where, command, mounts in [*_compose_commands(), *_k8s_commands()]:
        role, options = parse_service_command(command)
        files = [options.get(key) for key in ("tls_cert_file", "tls_key_file", "tls_ca_file")]
        assert all(files), f"{where}: {command}"
        cert, key, ca = files
        assert cert.endswith(f"/{role}.pem") and key.endswith(f"/{role}-key.pem"), where
        assert any(path.startswith(mount + "/") for mount in mounts for path in files), (where, mounts)
        assert not options.get("insecure_plaintext"), where
        seen.append(where)
    assert len([w for w in seen if w.startswith("compose")]) == 5
    assert len([w for w in seen if w.startswith("k8s")]) == 3


def test_k8s_certificate_secret_is_generated_and_mounted_per_role() -> None:
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    (secret,) = kustomization["secretGenerator"]
    assert secret["name"] == "infermesh-certs"
    for path in sorted(K8S_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "Deployment":
                continue
            for volume in doc["spec"]["template"]["spec"].get("volumes", []):
                if "secret" in volume:
                    assert volume["secret"]["secretName"] == "infermesh-certs"
                    keys = {item["key"] for item in volume["secret"]["items"]}
                    role = volume["name"].removeprefix("certs-")
                    # Each pod gets its own role's key only, never another role's.
                    assert keys == {"ca.pem", f"{role}.pem", f"{role}-key.pem"}, volume
                    assert f"certs/{role}-key.pem" in secret["files"]

"""deploy/docker-compose.yml: valid per the Compose Specification's JSON schema (vendored, see
compose_spec/README.md), and wired the way the cluster needs (discovery, scaling, scraping)."""

from __future__ import annotations

import copy
import json

import jsonschema
import pytest
import yaml

from tests.deploy.deploy_files import (
    COMPOSE_FILE,
    COMPOSE_SCHEMA,
    DEPLOY,
    INFERMESH_COMMANDS,
    REPO,
    load_compose,
    parse_service_command,
)


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    # The file names draft 2019-09 by an http URL with a trailing '#', which jsonschema's lookup
    # does not know; name the draft explicitly.
    assert "2019-09" in schema["$schema"]
    jsonschema.Draft201909Validator.check_schema(schema)
    return jsonschema.Draft201909Validator(schema)


def test_compose_file_matches_the_compose_specification(validator) -> None:
    errors = sorted(validator.iter_errors(load_compose()), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_the_validator_rejects_what_compose_rejects(validator) -> None:
    broken = copy.deepcopy(load_compose())
    broken["services"]["frontend"]["replicas_typo"] = 2
    assert list(validator.iter_errors(broken))
    broken = copy.deepcopy(load_compose())
    broken["services"]["scheduler"]["depends_on"] = {"redis": {"condition": "when_ready"}}
    assert list(validator.iter_errors(broken))


def infermesh_services(compose: dict) -> dict[str, dict]:
    return {
        name: service
        for name, service in compose["services"].items()
        if service.get("command") and service["command"][0] in INFERMESH_COMMANDS
    }


def test_every_service_is_there() -> None:
    compose = load_compose()
    assert {"frontend", "scheduler", "worker", "jaeger", "prometheus", "redis"} <= compose["services"].keys()
    kinds = {INFERMESH_COMMANDS[s["command"][0]] for s in infermesh_services(compose).values()}
    assert kinds == {"frontend", "scheduler", "worker"}


def test_infermesh_commands_use_only_options_their_schema_defines() -> None:
    for name, service in infermesh_services(load_compose()).items():
        kind, options = parse_service_command(service["command"])
        assert options, name
        if kind == "frontend":
            assert options["discovery"] == "redis" and options["redis_url"].startswith("redis://redis:")
        if kind == "scheduler":
            assert options["redis_url"].startswith("redis://redis:")
            assert options["advertise_address"] == f"{name}:{options['port']}"


def test_each_infermesh_image_is_built_from_its_own_dockerfile() -> None:
    compose = load_compose()
    for name in ("frontend", "scheduler", "worker"):
        build = compose["services"][name]["build"]
        dockerfile = (DEPLOY / build["context"] / build["dockerfile"]).resolve()
        assert dockerfile == REPO / "deploy" / "docker" / f"{name}.Dockerfile"
        assert dockerfile.is_file()


def test_frontend_scales_without_port_clashes() -> None:
    frontend = load_compose()["services"]["frontend"]
    assert "container_name" not in frontend
    for port in frontend["ports"]:
        host, _, _ = str(port).rpartition(":")
        low, _, high = host.partition("-")
        assert high and int(high) > int(low), f"{port}: a fixed host port breaks --scale frontend=2"


def test_second_replica_is_one_profile_with_its_own_worker() -> None:
    services = infermesh_services(load_compose())
    extra = {name for name, service in services.items() if "second-replica" in service.get("profiles", [])}
    assert extra == {"scheduler-b", "worker-b"}
    _, worker_b = parse_service_command(services["worker-b"]["command"])
    assert worker_b["scheduler_address"].startswith("scheduler-b:")
    _, worker = parse_service_command(services["worker"]["command"])
    assert worker["scheduler_address"].startswith("scheduler:")


def test_prometheus_scrapes_every_infermesh_service_on_its_metrics_port() -> None:
    compose = load_compose()
    prometheus = compose["services"]["prometheus"]
    source = DEPLOY / prometheus["volumes"][0]["source"]
    config = yaml.safe_load(source.read_text())
    scraped = {
        (name, sd["port"])
        for job in config["scrape_configs"]
        for sd in job.get("dns_sd_configs", [])
        for name in sd["names"]
    }
    for name, service in infermesh_services(compose).items():
        _, options = parse_service_command(service["command"])
        assert int(options["metrics_port"]) > 0, name
        assert (name, int(options["metrics_port"])) in scraped, name
        assert options["tracing_exporter"] == "otlp_grpc" and "jaeger:4317" in options["otlp_endpoint"]


def test_jaeger_takes_otlp_and_shows_its_ui() -> None:
    jaeger = load_compose()["services"]["jaeger"]
    assert "4317" in jaeger["expose"]
    assert any(str(port).endswith(":16686") for port in jaeger["ports"])
    assert jaeger["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"


def test_compose_file_is_plain_yaml_without_tabs() -> None:
    assert "\t" not in COMPOSE_FILE.read_text()

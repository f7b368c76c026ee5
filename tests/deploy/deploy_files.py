"""Paths of the deploy files and readers the deploy tests share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from infermesh_shared.config.flags import build_parser
from infermesh_shared.config.schema import load_schema

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
COMPOSE_SCHEMA = Path(__file__).parent / "compose_spec" / "compose-spec.json"
DOCKER_DIR = DEPLOY / "docker"
K8S_DIR = DEPLOY / "k8s"

# Console script -> config service name.
INFERMESH_COMMANDS = {
    "infermesh-frontend": "frontend",
    "infermesh-scheduler": "scheduler",
    "infermesh-worker": "worker",
}


def load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def parse_service_command(argv: list[str]) -> tuple[str, dict[str, Any]]:
    """Parses an infermesh command line with the flags its service's schema defines; returns
    (service, explicit option values). Raises ConfigError on an unknown flag."""
    service = INFERMESH_COMMANDS[argv[0]]
    namespace = build_parser(service, load_schema(service)).parse_args(argv[1:])
    return service, vars(namespace)

"""Runs the infermesh services of deploy/docker-compose.yml as local processes, with the command
and environment the file gives each, translated from the compose network to this machine:
service host names become 127.0.0.1, every (service, container port) gets a free local port, and
the model volume's target path becomes a local model directory."""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.deploy.deploy_files import INFERMESH_COMMANDS
from tests.free_port import free_port

# --flag=N options whose value is a port this service listens on.
_LISTEN_PORT_FLAGS = ("--port", "--metrics-port", "--http-port")
_HOST_PORT = re.compile(r"\b(?P<host>[a-z][a-z0-9-]*):(?P<port>\d+)\b")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR:-default} and ${VAR} interpolation."""

    def value(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(3) or ""
        return env.get(name) or default

    return re.sub(r"\$\{(\w+)(:-([^}]*))?\}", value, text)


@dataclass
class LocalTranslation:
    """How names and ports of the compose network map onto this machine."""

    service_names: set[str]
    # (service, container port) -> local port; filled on first use.
    ports: dict[tuple[str, int], int] = field(default_factory=dict)
    # Paths inside containers -> local paths.
    paths: dict[str, str] = field(default_factory=dict)

    def port(self, service: str, container_port: int) -> int:
        key = (service, container_port)
        if key not in self.ports:
            self.ports[key] = free_port()
        return self.ports[key]

    def value(self, service: str, text: str) -> str:
        """One argument or environment value, translated."""
        for flag in _LISTEN_PORT_FLAGS:
            if text.startswith(flag + "="):
                number = int(text.split("=", 1)[1])
                return f"{flag}={self.port(service, number) if number else 0}"
        if text == "--host=0.0.0.0":
            return "--host=127.0.0.1"

        def address(match: re.Match[str]) -> str:
            host = match.group("host")
            if host not in self.service_names:
                return match.group(0)
            return f"127.0.0.1:{self.port(host, int(match.group('port')))}"

        text = _HOST_PORT.sub(address, text)
        for inside, local in self.paths.items():
            text = text.replace(inside, local)
        return text


@dataclass
class LocalService:
    """A compose service as a local process description."""

    name: str
    kind: str
    argv: list[str]
    env: dict[str, str]
    depends_on: list[str]


def local_services(
    compose: dict[str, Any],
    compose_dir: Path,
    env: dict[str, str],
    preset_ports: dict[tuple[str, int], int] | None = None,
) -> tuple[list[LocalService], LocalTranslation]:
    """Every infermesh service of the file (all profiles), in dependency order. `preset_ports`
    maps (service, container port) of things started by the caller (Redis, a trace collector)."""
    services = compose["services"]
    translation = LocalTranslation(set(services), dict(preset_ports or {}))
    chosen: dict[str, LocalService] = {}
    for name, service in services.items():
        command = service.get("command") or []
        if not command or command[0] not in INFERMESH_COMMANDS:
            continue
        for volume in service.get("volumes", []):
            source = Path(interpolate(volume["source"], env))
            translation.paths[volume["target"]] = str(
                source if source.is_absolute() else compose_dir / source
            )
        depends = service.get("depends_on", [])
        chosen[name] = LocalService(
            name=name,
            kind=INFERMESH_COMMANDS[command[0]],
            argv=[str(part) for part in command],
            env={key: str(value) for key, value in (service.get("environment") or {}).items()},
            depends_on=list(depends) if isinstance(depends, list) else list(depends.keys()),
        )
    for service in chosen.values():
        service.argv = [service.argv[0], *(translation.value(service.name, arg) for arg in service.argv[1:])]
        service.env = {key: translation.value(service.name, value) for key, value in service.env.items()}
    ordered: list[LocalService] = []
    while len(ordered) < len(chosen):
        ready = [
            s
            for s in chosen.values()
            if s not in ordered
            and all(d in {o.name for o in ordered} or d not in chosen for d in s.depends_on)
        ]
        assert ready, "depends_on has a cycle"
        ordered.extend(ready)
    return ordered, translation


def process_args(service: LocalService) -> tuple[list[str], dict[str, str]]:
    """argv and environment to start `service` with: its console script run by this Python
    (the module of the same package), the test environment plus the file's variables."""
    module = service.argv[0].replace("-", "_")
    return [sys.executable, "-m", module, *service.argv[1:]], {**os.environ, **service.env}

"""Loads the per-service JSON Schemas (draft 2020-12) that define every option."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

SERVICES = ("scheduler", "worker", "frontend", "rescheduler")
SCHEMA_DIR = Path(__file__).parent / "schemas"


def schema_path(service: str) -> Path:
    """Path of the service's schema file."""
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}; expected one of {', '.join(SERVICES)}")
    return SCHEMA_DIR / f"{service}.schema.json"


@functools.cache
def _load(service: str) -> dict[str, Any]:
    schema = json.loads(schema_path(service).read_text())
    overrides = schema.pop("x-default-overrides", {})
    for fragment in schema.pop("x-include", []):
        _merge_fragment(schema, fragment, overrides)
    if overrides:
        raise RuntimeError(
            f"{service}: x-default-overrides names options no fragment has: {sorted(overrides)}"
        )
    return schema


def _merge_fragment(schema: dict[str, Any], name: str, overrides: dict[str, Any]) -> None:
    """Adds the options of schemas/<name>.fragment.json (options two services share, written once)
    after the service's own; `x-default-overrides` in the service schema re-defaults some of them."""
    fragment = json.loads((SCHEMA_DIR / f"{name}.fragment.json").read_text())
    for key, prop in fragment["properties"].items():
        if key in schema["properties"]:
            raise RuntimeError(f"{key} is both in {name}.fragment.json and a service schema")
        prop = copy.deepcopy(prop)
        if key in overrides:
            prop["default"] = overrides.pop(key)
        schema["properties"][key] = prop


def load_schema(service: str) -> dict[str, Any]:
    """A fresh copy of the service's schema (callers may mutate it)."""
    return copy.deepcopy(_load(service))


def property_types(prop: dict[str, Any]) -> list[str]:
    """The JSON types a property accepts, always as a list."""
    kind = prop.get("type", "string")
    return list(kind) if isinstance(kind, list) else [kind]


def defaults(schema: dict[str, Any]) -> dict[str, Any]:
    """Default value of every property that has one (required options have none)."""
    return {
        key: copy.deepcopy(prop["default"]) for key, prop in schema["properties"].items() if "default" in prop
    }


def sections(schema: dict[str, Any]) -> dict[str, list[str]]:
    """Group name (x-section, e.g. memory_config) -> the flat keys written under it."""
    groups: dict[str, list[str]] = {}
    for key, prop in schema["properties"].items():
        groups.setdefault(prop.get("x-section", "general_config"), []).append(key)
    return groups


def flag_name(key: str) -> str:
    """The command-line flag of a flat key: max_batch_size -> --max-batch-size."""
    return "--" + key.replace("_", "-")

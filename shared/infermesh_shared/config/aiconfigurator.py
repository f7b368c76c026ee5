"""Turns an aiconfigurator result (seed 003's YAML) into an infermesh scheduler config file."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .schema import defaults, load_schema
from .sources import normalise, read_config_file
from .validate import schema_errors

# worker_config keys and the seed-003 section infermesh reads them under.
_WORKER_KEYS = {
    "tp": "parallel_config", "pp": "parallel_config", "dp": "parallel_config",
    "moe_tp": "parallel_config", "moe_ep": "parallel_config",
    "gemm_quant_mode": "quantization_config", "kvcache_quant_mode": "quantization_config",
    "fmha_quant_mode": "quantization_config", "activation_quant_mode": "quantization_config",
    "weight_quant_mode": "quantization_config",
}  # fmt: skip
# Keys that describe the estimate rather than the deployment: kept as comments.
_INFORMATIONAL = ("model_name", "system_name", "serving_mode", "predicted_metrics")


@dataclass(slots=True)
class Imported:
    """The infermesh options, the comment lines to write above them, and what was not imported."""

    values: dict[str, Any] = field(default_factory=dict)
    comments: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    def to_yaml(self) -> str:
        """The config file text: comments first, then the options as flat keys."""
        head = "".join(f"# {line}\n" for line in self.comments)
        return head + (yaml.safe_dump(self.values, sort_keys=False) if self.values else "{}\n")


def _grouped_entries(aiconfig: dict[str, Any]) -> list[tuple[str, str, Any, str]]:
    """(section, key, value, where the user wrote it) in seed 003's structured form, as its
    convert_aiconfig_to_task builds it."""
    worker = aiconfig.get("worker_config") or {}
    entries: list[tuple[str, str, Any, str]] = []
    tp, pp = worker.get("tp", 1), worker.get("pp", 1)
    entries.append(("system_config", "total_gpus", aiconfig.get("total_gpus", tp * pp), "total_gpus"))
    for key, value in worker.items():
        entries.append((_WORKER_KEYS.get(key, "worker_config"), key, value, f"worker_config.{key}"))
    for key, value in (aiconfig.get("advanced_tuning_config") or {}).items():
        entries.append(("advanced_tuning_config", key, value, f"advanced_tuning_config.{key}"))
    return entries


def import_aiconfigurator(aiconfig: dict[str, Any], model_path: str | None = None) -> Imported:
    """Map each aiconfigurator setting through the same rules the loader applies to grouped
    config files; settings infermesh refuses are dropped and named (as comments and in `dropped`)."""
    if aiconfig.get("serving_mode", "agg") != "agg":
        raise ConfigError(
            f"serving_mode {aiconfig['serving_mode']!r} is not supported: infermesh runs aggregated "
            "serving (prefill and decode on the same workers); only serving_mode 'agg' can be imported"
        )
    schema = load_schema("scheduler")
    out = Imported()
    out.comments.append("infermesh-scheduler config imported from an aiconfigurator result")
    for key in _INFORMATIONAL:
        if key in aiconfig:
            out.comments.append(f"aiconfigurator {key}: {json.dumps(aiconfig[key])}")
    if model_path is None:
        out.comments.append(
            "model_path is not set: pass --model-path DIR (the checkpoint directory) when starting"
        )
    else:
        out.values["model_path"] = model_path

    known = {"worker_config", "advanced_tuning_config", "total_gpus", *_INFORMATIONAL}
    for key in aiconfig:
        if key not in known:
            out.dropped.append(f"{key}: no infermesh equivalent")
    for section, key, value, written in _grouped_entries(aiconfig):
        if section == "worker_config":
            out.dropped.append(f"{written}: no infermesh equivalent")
            continue
        try:
            mapped = normalise({section: {key: value}}, schema, "scheduler")
        except ConfigError as exc:
            out.dropped += [cause.replace(f"{section}.{key}", written) for cause in exc.causes]
            continue
        out.values.update(mapped.values)
        out.comments += mapped.notes

    order = list(schema["properties"])
    out.values = dict(sorted(out.values.items(), key=lambda item: order.index(item[0])))
    errors = [m for m in schema_errors(schema, defaults(schema) | out.values) if "is required" not in m]
    if errors:
        raise ConfigError(errors)
    out.comments += [f"NOT IMPORTED: {reason}" for reason in out.dropped]
    return out


def import_aiconfigurator_file(path: str | Path, model_path: str | None = None) -> Imported:
    """import_aiconfigurator on a YAML (or JSON) file."""
    return import_aiconfigurator(read_config_file(path), model_path)

"""Translates an infermesh scheduler config into the equivalent vLLM or SGLang flags.

Only options the user set are translated (defaults differ between engines), and only where
the other engine has an option that means the same; the rest are reported as unmapped."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .schema import defaults, load_schema
from .sources import normalise, read_config_file
from .validate import extension_errors, schema_errors

TARGETS = ("vllm", "sglang")
_TORCH_DTYPE = {"auto": "auto", "bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}

# A mapper gets (value, all resolved values) and returns the flags (may be none: the
# engine's default already means the same), or None when the engine has no equivalent.
Mapper = Callable[[Any, dict[str, Any]], list[str] | None]


def _flag(name: str, convert: Callable[[Any], Any] = lambda v: v) -> Mapper:
    return lambda value, values: [name, str(convert(value))]


def _switch(on: list[str], off: list[str]) -> Mapper:
    return lambda value, values: list(on if value else off)


def _when_positive(name: str, convert: Callable[[Any, dict[str, Any]], Any] = lambda v, _: v) -> Mapper:
    # 0 means "derive it" in infermesh, which is also the engines' default behaviour.
    return lambda value, values: [name, str(convert(value, values))] if value > 0 else []


def _policy(table: dict[str, list[str]]) -> Mapper:
    return lambda value, values: table.get(value)


def _vllm_swap(value: Any, values: dict[str, Any]) -> list[str] | None:
    # vLLM sizes swap in GiB (swap_space_gb gives that flag); a block count has no equivalent.
    if not value:
        return []
    return [] if values.get("swap_space_gb", 0) > 0 else None


VLLM: dict[str, Mapper] = {
    "model_path": _flag("--model"),
    "dtype": _flag("--dtype", _TORCH_DTYPE.get),
    "tp_size": _flag("--tensor-parallel-size"),
    "pp_size": _flag("--pipeline-parallel-size"),
    "max_batch_size": _flag("--max-num-seqs"),
    "max_tokens_per_step": _flag("--max-num-batched-tokens"),
    "enable_prefix_cache": _switch(["--enable-prefix-caching"], ["--no-enable-prefix-caching"]),
    "block_size": _flag("--block-size"),
    "gpu_memory_utilization": _flag("--gpu-memory-utilization"),
    "max_model_len": _when_positive("--max-model-len"),
    "total_blocks": _when_positive("--num-gpu-blocks-override"),
    "swap_space_gb": _when_positive("--swap-space"),
    "enable_swap": _vllm_swap,
    "policy": _policy(
        {"continuous": ["--scheduling-policy", "fcfs"], "priority": ["--scheduling-policy", "priority"]}
    ),
    "chunked_prefill": _policy({"fixed": ["--enable-chunked-prefill"]}),
    "custom_config": lambda value, values: ["--hf-overrides", value] if value else [],
    "otlp_endpoint": lambda value, values: ["--otlp-traces-endpoint", value] if value else [],
    # false keeps the window, as vLLM does by default; vLLM's --disable-sliding-window also caps
    # max_model_len to the window, which ours does not, so true has no equivalent.
    "disable_sliding_window": lambda value, values: None if value else [],
}

SGLANG: dict[str, Mapper] = {
    "model_path": _flag("--model-path"),
    "dtype": _flag("--dtype", _TORCH_DTYPE.get),
    "tp_size": _flag("--tp-size"),
    "pp_size": _flag("--pp-size"),
    "max_batch_size": _flag("--max-running-requests"),
    "max_tokens_per_step": _flag("--chunked-prefill-size"),
    "enable_prefix_cache": _switch([], ["--disable-radix-cache"]),
    "block_size": _flag("--page-size"),
    "gpu_memory_utilization": _flag("--mem-fraction-static"),
    "max_model_len": _when_positive("--context-length"),
    "total_blocks": _when_positive("--max-total-tokens", lambda v, values: v * values["block_size"]),
    "policy": _policy(
        {"continuous": ["--schedule-policy", "fcfs"], "priority": ["--enable-priority-scheduling"]}
    ),
    "max_queue_size": _flag("--max-queued-requests"),
    "custom_config": lambda value, values: ["--json-model-override-args", value] if value else [],
    "log_level": _flag("--log-level", lambda v: {"warn": "warning", "trace": "debug"}.get(v, v)),
}


@dataclass(slots=True)
class Translation:
    """Flags for the target engine, and the set options it has no equivalent for."""

    target: str
    args: list[str] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)


def translate_values(values: dict[str, Any], explicit: list[str], target: str) -> Translation:
    """Flags for the explicitly set options `explicit` of the resolved scheduler `values`."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; expected one of {', '.join(TARGETS)}")
    table = VLLM if target == "vllm" else SGLANG
    out = Translation(target)
    for key in explicit:
        mapper = table.get(key)
        flags = mapper(values[key], values) if mapper else None
        if flags is None:
            out.unmapped.append(f"{key} = {json.dumps(values[key])}")
        else:
            out.args += flags
    return out


def translate_file(path: str | Path, target: str) -> Translation:
    """Translate a scheduler config file (flat or grouped keys). The file is checked against
    the schema first, but model_path need not exist: the target machine is elsewhere."""
    schema = load_schema("scheduler")
    normalised = normalise(read_config_file(path), schema, "scheduler")
    values = defaults(schema) | normalised.values
    explicit = [key for key in schema["properties"] if key in normalised.values]
    errors = [m for m in schema_errors(schema, values) if not m.startswith("model_path is required")]
    errors += extension_errors(schema, values, set(explicit))
    if errors:
        raise ConfigError(errors)
    return translate_values(values, explicit, target)

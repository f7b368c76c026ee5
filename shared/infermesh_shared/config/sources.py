"""Reads config files and turns flat or grouped (seed 003) keys into the schema's flat keys."""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .schema import sections

# A grouped key from seed 003 either renames one of our flat keys, maps onto several, is
# honoured by what infermesh always does (returns no keys, adds a note), or is refused.
AliasHandler = Callable[[str, Any, list[str]], list[tuple[str, Any]]]


class _Refused(Exception):
    pass


def _to(target: str) -> AliasHandler:
    return lambda path, value, notes: [(target, value)]


def _refuse(reason: str) -> AliasHandler:
    def handler(path: str, value: Any, notes: list[str]) -> list[tuple[str, Any]]:
        raise _Refused(f"{path} is not supported: {reason}")

    return handler


def _data_parallel(path: str, value: Any, notes: list[str]) -> list[tuple[str, Any]]:
    if value in (None, 1):
        return []  # one scheduler is one data-parallel replica: exactly what dp = 1 asks
    raise _Refused(
        f"{path} = {value!r} is not supported: data-parallel replicas are separate scheduler "
        "deployments; run that many schedulers and list them in the frontend's scheduler_addresses"
    )


def _moe(path: str, value: Any, notes: list[str]) -> list[tuple[str, Any]]:
    if value in (None, 1):
        return []
    raise _Refused(
        f"{path} = {value!r} is not supported: infermesh serves dense Llama-family models (no MoE)"
    )


def _enforce_eager(path: str, value: Any, notes: list[str]) -> list[tuple[str, Any]]:
    if not isinstance(value, bool):
        raise _Refused(f"{path} must be a boolean (got {type(value).__name__} {value!r})")
    notes.append(f"{path} is not applicable: infermesh always runs the model eagerly (no CUDA graphs)")
    return []


def _chunked_prefill_switch(path: str, value: Any, notes: list[str]) -> list[tuple[str, Any]]:
    if value is True:
        return []  # prefills are always chunked to max_tokens_per_step
    raise _Refused(
        f"{path} = {value!r} is not supported: infermesh always splits long prefills into chunks of at "
        "most max_tokens_per_step tokens; raise max_tokens_per_step instead"
    )


_SCHEDULE_POLICIES = {
    "fcfs": "continuous",
    "continuous": "continuous",
    "priority": "priority",
    "fair": "fair",
    "edf": "edf",
    "lrs": "lrs",
}


def _schedule_policy(path: str, value: Any, notes: list[str]) -> list[tuple[str, Any]]:
    if value == "lpm":
        raise _Refused(
            f"{path} = 'lpm' (longest prefix match first) is not supported yet; "
            "use fcfs, priority, fair, edf or lrs"
        )
    if value not in _SCHEDULE_POLICIES:
        raise _Refused(f"{path} must be one of fcfs, priority, fair, edf, lrs, lpm (got {value!r})")
    return [("policy", _SCHEDULE_POLICIES[value])]


_QUANT_MODES = ("float16", "fp8", "int8", "int4")


def _quant_mode(path: str, value: Any, notes: list[str]) -> list[tuple[str, Any]]:
    if value in (None, "none", "float16"):
        return []  # no quantization: weights and KV cache stay in `dtype`
    if value in _QUANT_MODES:
        raise _Refused(
            f"{path} = {value!r} is not supported yet: infermesh keeps weights and KV cache in dtype "
            "(bf16/fp16/fp32); fp8/int8/int4 quantization is not implemented"
        )
    raise _Refused(f"Invalid {path.rsplit('.', 1)[-1]}: {value!r} (valid: {', '.join(_QUANT_MODES)})")


def _swap_space(path: str, value: Any, notes: list[str]) -> list[tuple[str, Any]]:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return [("enable_swap", True), ("swap_space_gb", value)]
    return [("swap_space_gb", value)]


def _hardware(path: str, value: Any, notes: list[str]) -> list[tuple[str, Any]]:
    raise _Refused(
        f"{path} is not supported: it describes hardware for aiconfigurator's estimates; infermesh takes "
        "the device from each worker (--device) — remove it"
    )


SEED003_ALIASES: dict[str, dict[str, AliasHandler]] = {
    "system_config": {
        "total_gpus": _to("num_workers"),
        "gpu_type": _hardware,
        "memory_per_gpu": _hardware,
        "nvlink_bandwidth": _hardware,
        "pcie_bandwidth": _hardware,
        "interconnect_type": _hardware,
    },
    "parallel_config": {
        "tp": _to("tp_size"),
        "pp": _to("pp_size"),
        "dp": _data_parallel,
        "moe_tp": _moe,
        "moe_ep": _moe,
    },
    "quantization_config": {
        mode: _quant_mode
        for mode in (
            "gemm_quant_mode",
            "kvcache_quant_mode",
            "fmha_quant_mode",
            "activation_quant_mode",
            "weight_quant_mode",
        )
    },
    "memory_config": {
        "mem_fraction_static": _to("gpu_memory_utilization"),
        "max_model_len": _to("max_model_len"),
        "enforce_eager": _enforce_eager,
    },
    "scheduling_config": {
        "schedule_policy": _schedule_policy,
        "max_num_batched_tokens": _to("max_tokens_per_step"),
        "max_num_seqs": _to("max_batch_size"),
        "chunked_prefill_enabled": _chunked_prefill_switch,
    },
    "advanced_tuning_config": {
        "enable_prefix_caching": _to("enable_prefix_cache"),
        "max_batch_size": _to("max_batch_size"),
        "enable_chunked_prefill": _chunked_prefill_switch,
        "swap_space": _swap_space,
        "mem_fraction_static": _to("gpu_memory_utilization"),
        "max_prefill_batch_size": _refuse(
            "not supported yet: prefills per step are bounded by max_tokens_per_step and max_batch_size"
        ),
        "disable_sliding_window": _to("disable_sliding_window"),
    },
}


# Seed 003's legacy flat `parameters` (SGLang / vLLM flag names, each with a list of values to
# try): a flag names one of our flat options, or "section.key" of a grouped alias above so both
# forms share one rule. Our own options in flag form (block-size) are accepted too.
LEGACY_PARAMETERS: dict[str, str] = {
    "tp-size": "tp_size",
    "tensor-parallel-size": "tp_size",
    "pp-size": "pp_size",
    "pipeline-parallel-size": "pp_size",
    "dp-size": "parallel_config.dp",
    "data-parallel-size": "parallel_config.dp",
    "mem-fraction-static": "gpu_memory_utilization",
    "gpu-memory-utilization": "gpu_memory_utilization",
    "max-model-len": "max_model_len",
    "context-length": "max_model_len",
    "schedule-policy": "scheduling_config.schedule_policy",
    "max-num-batched-tokens": "max_tokens_per_step",
    "max-num-seqs": "max_batch_size",
    "max-running-requests": "max_batch_size",
    "kv-cache-dtype": "quantization_config.kvcache_quant_mode",
    "quantization": "quantization_config.gemm_quant_mode",
    "enable-prefix-caching": "enable_prefix_cache",
    "enable-chunked-prefill": "advanced_tuning_config.enable_chunked_prefill",
    "swap-space": "advanced_tuning_config.swap_space",
    "disable-sliding-window": "disable_sliding_window",
    "enforce-eager": "memory_config.enforce_eager",
}


def _legacy_value(path: str, values: Any) -> Any:
    """The one value of a legacy entry: the seed lists values to sweep; one run takes one."""
    if not isinstance(values, list):
        return values  # a bare value is a list of one
    if len(values) == 1:
        return values[0]
    if not values:
        raise _Refused(f"{path} is empty: give the one value to run with, e.g. {path.split('.', 1)[1]}: [4]")
    raise _Refused(
        f"{path} = {values!r} lists {len(values)} values: a legacy parameters entry is a sweep (one run "
        f"per value) but a scheduler runs with one value; keep one (e.g. [{values[0]!r}]) and start "
        "one scheduler per value to compare them"
    )


def _legacy_parameters(
    body: dict[str, Any], props: dict[str, Any], notes: list[str], errors: list[str]
) -> list[tuple[str, Any, str]]:
    """(flat key, value, where it was written) for each entry of seed 003's `parameters`."""
    own_flags = {key.replace("_", "-"): key for key in props}
    out: list[tuple[str, Any, str]] = []
    for flag, values in body.items():
        flag = str(flag)
        path = f"parameters.{flag}"
        target = LEGACY_PARAMETERS.get(flag) or own_flags.get(flag)
        if target is None:
            hint = did_you_mean(flag, list(LEGACY_PARAMETERS) + list(own_flags))
            errors.append(f"Invalid parameters key: {flag!r}{hint}")
            continue
        try:
            value = _legacy_value(path, values)
            if "." in target:
                section, alias = target.split(".")
                pairs = SEED003_ALIASES[section][alias](path, value, notes)
                out += [(key, mapped, path) for key, mapped in pairs]
            else:
                out.append((target, value, path))
        except _Refused as exc:
            errors.append(str(exc))
    return out


@dataclass(slots=True)
class Normalised:
    """Flat option values from one source, where each was written, and notes to log."""

    values: dict[str, Any] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a config file: .json is read as JSON, anything else as YAML."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)  # YAML 1.1 is a superset of JSON for our purposes
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(
            f"config file {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}"
        ) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of options, not a {type(data).__name__}")
    return data


def did_you_mean(name: str, candidates: Sequence[str]) -> str:
    """' (did you mean 'x'?)' for the closest candidate, or '' when none is close."""
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def normalise(raw: dict[str, Any], schema: dict[str, Any], service: str) -> Normalised:
    """Flatten one source's mapping: top-level flat keys, our own sections (memory_config:
    {block_size: 32}), seed 003's sections and its legacy `parameters` all become flat keys; every
    problem is collected."""
    props = schema["properties"]
    own_sections = sections(schema)
    out = Normalised()
    errors: list[str] = []

    def put(key: str, value: Any, path: str) -> None:
        if key == "custom_config" and isinstance(value, dict):
            value = json.dumps(value)  # a mapping in a file means the same as its JSON text
        if key in out.values and out.values[key] != value:
            errors.append(
                f"{key} is given twice with different values: {out.origins[key]} = {out.values[key]!r} "
                f"and {path} = {value!r}"
            )
            return
        out.values[key] = value
        out.origins[key] = path

    # Seed 003's sections describe one serving engine: in infermesh, the scheduler's options.
    aliases = SEED003_ALIASES if service == "scheduler" else {}
    section_names = sorted(set(own_sections) | set(aliases))
    legacy = ["parameters"] if aliases else []
    for top, value in raw.items():
        top = str(top)
        if top in props:
            put(top, value, top)
        elif top in legacy:
            if not isinstance(value, dict):
                errors.append(f"parameters must be a mapping of flag: [value] (got {type(value).__name__})")
                continue
            for key, mapped, path in _legacy_parameters(value, props, out.notes, errors):
                put(key, mapped, path)
        elif top in section_names:
            if not isinstance(value, dict):
                errors.append(f"{top} must be a mapping of options (got {type(value).__name__})")
                continue
            _flatten_section(
                top,
                value,
                props,
                own_sections.get(top, []),
                aliases.get(top, {}),
                out.notes,
                put,
                errors,
                service,
            )
        else:
            hint = did_you_mean(top, list(props) + section_names + legacy)
            errors.append(f"unknown option {top!r} for the {service}{hint}")
    if errors:
        raise ConfigError(errors)
    return out


def _flatten_section(
    section: str,
    body: dict[str, Any],
    props: dict[str, Any],
    own: list[str],
    aliases: dict[str, AliasHandler],
    notes: list[str],
    put: Callable[[str, Any, str], None],
    errors: list[str],
    service: str,
) -> None:
    for sub, value in body.items():
        sub = str(sub)
        path = f"{section}.{sub}"
        if sub in own:
            put(sub, value, path)
        elif sub in aliases:
            try:
                pairs = aliases[sub](path, value, notes)
            except _Refused as exc:
                errors.append(str(exc))
                continue
            for key, mapped in pairs:
                if key in props:
                    put(key, mapped, path)
                else:
                    errors.append(
                        f"{path} does not apply to the {service} (it sets {key}, which the {service} "
                        "does not have)"
                    )
        elif sub in props:
            home = props[sub].get("x-section", "the top level")
            errors.append(f"{path}: {sub} belongs in {home} (or at the top level), not in {section}")
        else:
            hint = did_you_mean(sub, own + list(aliases) + list(props))
            errors.append(f"unknown option {path!r} for the {service}{hint}")

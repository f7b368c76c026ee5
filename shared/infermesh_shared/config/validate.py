"""Validation of a resolved flat config: the schema, then the cross-field rules of seeds 000/003."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from ..discovery.dns_discovery import split_host_port
from .model_metadata import ModelMetadata, ModelMetadataError, parse_custom_config, read_model_metadata
from .schema import flag_name, property_types

_TYPE_WORDS = {
    "integer": "an integer",
    "number": "a number",
    "string": "a string",
    "boolean": "a boolean",
    "array": "a list",
    "object": "a mapping",
    "null": "null",
}
_RANGE_KEYWORDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


@dataclass(slots=True)
class Validated:
    """Every broken rule (empty when valid) and, for the scheduler, the model's metadata."""

    errors: list[str] = field(default_factory=list)
    metadata: ModelMetadata | None = None


def range_text(prop: dict[str, Any]) -> str:
    """The allowed range in seed 000's words: 'must be in range (0.0, 1.0]', 'must be > 0'."""
    as_float = "integer" not in property_types(prop)

    def show(bound: float) -> str:
        return str(float(bound)) if as_float else str(int(bound))

    low = (
        ("(", prop["exclusiveMinimum"])
        if "exclusiveMinimum" in prop
        else (("[", prop["minimum"]) if "minimum" in prop else None)
    )
    high = (
        (")", prop["exclusiveMaximum"])
        if "exclusiveMaximum" in prop
        else (("]", prop["maximum"]) if "maximum" in prop else None)
    )
    if low and high:
        return f"must be in range {low[0]}{show(low[1])}, {show(high[1])}{high[0]}"
    if low:
        return f"must be {'>' if low[0] == '(' else '>='} {show(low[1])}"
    if high:
        return f"must be {'<' if high[0] == ')' else '<='} {show(high[1])}"
    return "is out of range"


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    return {float: "number", str: "string", list: "list", dict: "mapping", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _schema_message(error: ValidationError, schema: dict[str, Any]) -> str:
    props = schema["properties"]
    if error.validator == "required":
        key = error.message.split("'")[1]
        return f"{key} is required (set {flag_name(key)} or {key} in the config file)"
    if not error.absolute_path:
        return error.message
    key = str(error.absolute_path[0])
    where = key + "".join(f"[{part}]" for part in list(error.absolute_path)[1:])
    prop = props.get(key, {})
    sub = error.schema if len(error.absolute_path) > 1 else prop
    value = error.instance
    if error.validator == "type":
        kinds = " or ".join(_TYPE_WORDS.get(k, k) for k in property_types(sub))
        return f"{where} must be {kinds} (got {_json_type(value)} {value!r})"
    if error.validator in _RANGE_KEYWORDS:
        return f"{where} {range_text(sub)}"
    if error.validator == "enum":
        return f"{where} must be one of {'/'.join(map(str, sub['enum']))} (got {value!r})"
    if error.validator == "minLength" and sub.get("minLength") == 1:
        return f"{where} must not be empty"
    if error.validator == "pattern":
        return f"{where} = {value!r} is not in the expected format: {sub.get('description', sub['pattern'])}"
    return f"{where}: {error.message}"


def schema_errors(schema: dict[str, Any], values: dict[str, Any]) -> list[str]:
    """Messages for every schema violation, in the schema's property order."""
    order = {key: i for i, key in enumerate(schema["properties"])}

    def position(error: ValidationError) -> int:
        if error.absolute_path:
            return order.get(str(error.absolute_path[0]), len(order))
        return -1

    messages: list[str] = []
    for error in sorted(Draft202012Validator(schema).iter_errors(values), key=position):
        message = _schema_message(error, schema)
        if message not in messages:
            messages.append(message)
    return messages


def _describe(value: Any) -> str:
    return "true" if value is True else "false" if value is False else repr(value)


def extension_errors(schema: dict[str, Any], values: dict[str, Any], explicit: set[str]) -> list[str]:
    """Options set to a non-default value that cannot be honoured: x-unsupported (not
    implemented yet) and x-applies-when (another option makes this one do nothing)."""
    errors: list[str] = []
    for key, prop in schema["properties"].items():
        if key not in explicit or values.get(key) == prop.get("default"):
            continue
        if "x-unsupported" in prop:
            errors.append(f"{key} = {_describe(values[key])} is not supported yet: {prop['x-unsupported']}")
        for other, wanted in prop.get("x-applies-when", {}).items():
            allowed = wanted if isinstance(wanted, list) else [wanted]
            if values.get(other) not in allowed:
                needed = " or ".join(_describe(v) for v in allowed)
                errors.append(
                    f"{key} only applies when {other} is {needed} (it is {_describe(values.get(other))}): "
                    f"remove {key} or set {other}"
                )
    return errors


Rule = Callable[[dict[str, Any], Validated], list[str]]


def _workers_cover_parallelism(values: dict[str, Any], out: Validated) -> list[str]:
    tp, pp, workers = values["tp_size"], values["pp_size"], values["num_workers"]
    if workers < tp * pp:
        return [f"num_workers ({workers}) must be >= tp_size * pp_size ({tp} * {pp} = {tp * pp})"]
    return []


def _model_metadata(values: dict[str, Any], out: Validated) -> list[str]:
    try:
        parse_custom_config(values.get("custom_config"))
    except ModelMetadataError as exc:
        return [str(exc)]
    try:
        out.metadata = read_model_metadata(values["model_path"], values.get("custom_config"))
    except ModelMetadataError as exc:
        return [f"model metadata read failed: {exc}"]
    return []


def _fits_model(values: dict[str, Any], out: Validated) -> list[str]:
    meta = out.metadata
    if meta is None:
        return []
    errors = []
    if values["max_model_len"] > meta.max_position_embeddings:
        errors.append(
            f"max_model_len ({values['max_model_len']}) must be <= the model's max_position_embeddings "
            f"({meta.max_position_embeddings})"
        )
    tp, pp = values["tp_size"], values["pp_size"]
    if meta.num_attention_heads % tp:
        errors.append(
            f"tp_size ({tp}) must divide the model's num_attention_heads ({meta.num_attention_heads})"
        )
    elif meta.num_kv_heads % tp and tp % meta.num_kv_heads:
        errors.append(
            f"tp_size ({tp}) and the model's num_key_value_heads ({meta.num_kv_heads}) "
            "must divide one another"
        )
    if pp > meta.num_layers:
        errors.append(f"pp_size ({pp}) must be <= the model's num_hidden_layers ({meta.num_layers})")
    return errors


def chunk_bounds_errors(min_chunk_size: int, max_chunk_size: int) -> list[str]:
    """min_chunk_size <= max_chunk_size (the config and the scheduler core both ask this)."""
    if min_chunk_size > max_chunk_size:
        return [f"min_chunk_size ({min_chunk_size}) must be <= max_chunk_size ({max_chunk_size})"]
    return []


def preemption_threshold_errors(threshold: int, num_blocks: int) -> list[str]:
    """The blocks kept back must leave some to run with; num_blocks 0 = not sized yet."""
    if num_blocks > 0 and threshold >= num_blocks:
        return [f"preemption_threshold ({threshold}) must be < total_blocks ({num_blocks})"]
    return []


def _chunk_bounds(values: dict[str, Any], out: Validated) -> list[str]:
    return chunk_bounds_errors(values["min_chunk_size"], values["max_chunk_size"])


def _preemption_threshold(values: dict[str, Any], out: Validated) -> list[str]:
    return preemption_threshold_errors(values["preemption_threshold"], values["total_blocks"])


def _prefix_cache_capacity(values: dict[str, Any], out: Validated) -> list[str]:
    capacity, block = values["prefix_cache_capacity"], values["block_size"]
    if values["enable_prefix_cache"] and capacity < block:
        return [
            f"prefix_cache_capacity ({capacity} tokens) is less than one block ({block} tokens), so "
            "nothing could be cached: raise it, or set enable_prefix_cache to false"
        ]
    return []


def _discovery_source(values: dict[str, Any], out: Validated) -> list[str]:
    discovery = values["discovery"]
    needs = {"static": "scheduler_addresses", "dns": "dns_name", "redis": "redis_url"}[discovery]
    if not values[needs]:
        return [f"discovery = {discovery!r} needs {needs} to be set"]
    if discovery == "dns":
        try:
            split_host_port(values["dns_name"])
        except ValueError as error:
            return [f"dns_name must be HOST:PORT resolving to every scheduler replica ({error})"]
    return []


def _own_http_port(values: dict[str, Any], out: Validated) -> list[str]:
    http_port = values["http_port"]
    if http_port and http_port in (values["port"], values["metrics_port"]):
        return [
            f"http_port {http_port} is also the gRPC port or the metrics port; "
            "give the HTTP API a port of its own"
        ]
    return []


def _client_tls_certificate(values: dict[str, Any], out: Validated) -> list[str]:
    if values["client_tls"] and not (values["tls_cert_file"] and values["tls_key_file"]):
        return ["client_tls needs tls_cert_file and tls_key_file (the frontend's certificate)"]
    return []


def _tokenizer_directory(values: dict[str, Any], out: Validated) -> list[str]:
    path = Path(values["model_path"])
    if not path.is_dir():
        return [f"model_path {str(path)!r} is not a directory (it must hold the tokenizer files)"]
    return []


# Policies that act on prefill/decode replica roles (binpacking also on a TPOT SLO): none exist yet.
PD_ROLE_POLICIES = (
    "prefill_failover",
    "decode_failover",
    "binpacking_mitigation",
    "binpacking_consolidation",
)
_PD_ROLES_MISSING = (
    "infermesh replicas have no prefill/decode roles yet (issue 15, PD disaggregation), so they would "
    "act on nothing"
)


def select_value_errors(rule: str, value: float) -> list[str]:
    """rescheduling_req_select_value must be a bound the rule can use (config and rescheduler ask)."""
    if value <= 0:
        return [f"rescheduling_req_select_value must be positive, got {value}"]
    if rule == "RATIO" and value > 1:
        return [
            "rescheduling_req_select_value is a fraction of the KV cache with RATIO "
            f"(0 < value <= 1), got {value}"
        ]
    if rule == "NUM_REQ" and value != int(value):
        return [f"rescheduling_req_select_value counts requests with NUM_REQ: a whole number, got {value}"]
    return []


def _rescheduling_policies(values: dict[str, Any], out: Validated) -> list[str]:
    if not values["enable_rescheduling"]:
        return []
    errors = []
    needing_roles = [p for p in values["rescheduling_policies"] if p in PD_ROLE_POLICIES]
    if needing_roles:
        usable = [p for p in values["rescheduling_policies"] if p not in PD_ROLE_POLICIES]
        suggestion = ",".join(usable or ["decode_load", "neutral_failover"])
        errors.append(
            f"rescheduling_policies {', '.join(needing_roles)}: {_PD_ROLES_MISSING}; "
            f"set --rescheduling-policies {suggestion}"
        )
    if not values["rescheduling_policies"]:
        errors.append(
            "rescheduling_policies is empty: name at least one policy, or set enable_rescheduling false"
        )
    if values["rescheduling_load_balance_scope"] == "unit":
        errors.append(
            "rescheduling_load_balance_scope = 'unit' balances within a PD unit; infermesh replicas "
            "belong to no unit yet (issue 15): use 'cluster'"
        )
    errors += select_value_errors(
        values["rescheduling_req_select_rule"], values["rescheduling_req_select_value"]
    )
    return errors


def _colocated_rescheduler(values: dict[str, Any], out: Validated) -> list[str]:
    if values["standalone_rescheduling_mode"]:
        return [
            "standalone_rescheduling_mode is infermesh-rescheduler's mode: run that process with the "
            "rescheduling options, or set colocated_rescheduling_mode to run it in this frontend"
        ]
    if values["enable_rescheduling"] and not values["colocated_rescheduling_mode"]:
        return [
            "enable_rescheduling needs a mode: set colocated_rescheduling_mode to run the rescheduler "
            "in this frontend, or run infermesh-rescheduler (standalone) instead"
        ]
    return []


def _standalone_rescheduler(values: dict[str, Any], out: Validated) -> list[str]:
    if values["colocated_rescheduling_mode"] or not values["standalone_rescheduling_mode"]:
        return [
            "infermesh-rescheduler is the standalone rescheduler: standalone_rescheduling_mode must be "
            "true and colocated_rescheduling_mode false (the colocated one runs in a frontend)"
        ]
    if not values["enable_rescheduling"]:
        return ["enable_rescheduling is false: infermesh-rescheduler would have nothing to do"]
    return []


CROSS_FIELD_RULES: dict[str, list[Rule]] = {
    "scheduler": [
        _workers_cover_parallelism,
        _model_metadata,
        _fits_model,
        _chunk_bounds,
        _preemption_threshold,
        _prefix_cache_capacity,
    ],
    "worker": [],
    "frontend": [
        _tokenizer_directory,
        _discovery_source,
        _own_http_port,
        _client_tls_certificate,
        _colocated_rescheduler,
        _rescheduling_policies,
    ],
    "rescheduler": [_discovery_source, _standalone_rescheduler, _rescheduling_policies],
}


def option_errors(schema: dict[str, Any], values: dict[str, Any]) -> list[str]:
    """Schema violations of some options on their own (type, range, enum): for a component that is
    handed a subset of a service's options (the scheduler core) rather than a whole config."""
    props = schema["properties"]
    subset = {"type": "object", "properties": {key: props[key] for key in values if key in props}}
    return schema_errors(subset, values)


def validate_values(
    service: str, schema: dict[str, Any], values: dict[str, Any], explicit: set[str]
) -> Validated:
    """All broken rules; cross-field rules run only once the schema holds (they trust types)."""
    out = Validated(errors=schema_errors(schema, values))
    if out.errors:
        return out
    out.errors += extension_errors(schema, values, explicit)
    for rule in CROSS_FIELD_RULES.get(service, []):
        out.errors += rule(values, out)
    return out


def not_applicable_notes(schema: dict[str, Any], values: dict[str, Any], device_type: str) -> list[str]:
    """Notes for options set to a non-default value that do nothing on this device type
    (x-devices lists where they apply, e.g. enable_flash_attn on cuda): log them, don't refuse."""
    notes = []
    for key, prop in schema["properties"].items():
        devices = prop.get("x-devices")
        if devices and device_type not in devices and key in values:
            notes.append(
                f"{key} = {_describe(values[key])} is not applicable on {device_type} "
                f"(applies on {', '.join(devices)})"
            )
    return notes

"""Resolves a service's configuration: defaults < config file < command line, then validates."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from .errors import EXIT_INVALID_CONFIG, ConfigError
from .flags import parse_flags
from .kv_sizing import GIB, blocks_for_budget, kv_block_bytes, resolve_dtype
from .model_metadata import ModelMetadata
from .schema import defaults, load_schema
from .sources import normalise, read_config_file
from .typed import ServiceConfig, build_config, unknown_option_errors
from .validate import validate_values


def resolve_config(service: str, argv: Sequence[str], schema: dict[str, Any] | None = None) -> ServiceConfig:
    """The validated config for argv (flags, --config-file); raises ConfigError when invalid.

    --validate / --print-schema are accepted and ignored here; load_config acts on them."""
    schema = schema if schema is not None else load_schema(service)
    flags = parse_flags(service, schema, list(argv))
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    notes: list[str] = []
    if flags.config_file:
        from_file = normalise(read_config_file(flags.config_file), schema, service)
        values.update(from_file.values)
        sources.update({k: f"file:{flags.config_file}:{path}" for k, path in from_file.origins.items()})
        notes += from_file.notes
    values.update(flags.values)
    sources.update(dict.fromkeys(flags.values, "flag"))
    return _validated(service, schema, values, sources, notes)


def config_from_options(service: str, **options: Any) -> ServiceConfig:
    """The validated config of options given by flat name (what an embedding program or a test
    passes instead of flags); raises ConfigError like the command line would."""
    schema = load_schema(service)
    errors = unknown_option_errors(service, options)
    if errors:
        raise ConfigError(errors)
    return _validated(service, schema, options, dict.fromkeys(options, "argument"), [])


def _validated(
    service: str, schema: dict[str, Any], given: dict[str, Any], sources: dict[str, str], notes: list[str]
) -> ServiceConfig:
    values = defaults(schema)
    values.update(given)
    validated = validate_values(service, schema, values, set(given))
    if validated.errors:
        raise ConfigError([_with_origin(message, sources) for message in validated.errors])
    if validated.metadata is not None:
        derive_from_model(values, validated.metadata)
    return build_config(service, values, sources, notes, validated.metadata)


def _with_origin(message: str, sources: dict[str, str]) -> str:
    # A message names the flat key; say so when the user wrote it under another name.
    subject = message.split(" ", 1)[0]
    where = sources.get(subject, "")
    if where.startswith("file:"):
        written = where.rsplit(":", 1)[-1]
        if written != subject:
            return f"{message} (given as {written})"
    return message


def derive_from_model(values: dict[str, Any], metadata: ModelMetadata) -> None:
    """Options whose 0 means "from the model": max_model_len (the model's max_position_embeddings)
    and num_cpu_blocks (vLLM's swap_space is GiB per worker; our scheduler counts CPU blocks)."""
    if values.get("max_model_len") == 0:
        values["max_model_len"] = metadata.max_position_embeddings
    if values.get("enable_swap") and values.get("swap_space_gb", 0) > 0 and values.get("num_cpu_blocks") == 0:
        block_bytes = kv_block_bytes(
            metadata,
            values["block_size"],
            # auto: the checkpoint's dtype, what a GPU worker (where swap matters) loads.
            resolve_dtype(values["dtype"], metadata.torch_dtype),
            values["tp_size"],
            values["pp_size"],
        )
        values["num_cpu_blocks"] = blocks_for_budget(int(values["swap_space_gb"] * GIB), block_bytes)


def load_config(service: str, argv: Sequence[str] | None = None) -> ServiceConfig:
    """resolve_config for a service's main(): prints the error block and exits 2 when invalid,
    prints the schema (--print-schema) or the resolved config (--validate) and exits 0."""
    argv = list(sys.argv[1:] if argv is None else argv)
    schema = load_schema(service)
    try:
        flags = parse_flags(service, schema, argv)
        if flags.print_schema:
            sys.stdout.write(json.dumps(schema, indent=2) + "\n")
            raise SystemExit(0)
        config = resolve_config(service, argv, schema)
    except ConfigError as exc:
        sys.stderr.write(exc.render())
        raise SystemExit(EXIT_INVALID_CONFIG) from None
    if flags.validate:
        for note in config.notes:
            sys.stderr.write(f"note: {note}\n")
        sys.stdout.write(json.dumps(config.to_dict(), indent=2) + "\n")
        raise SystemExit(0)
    return config

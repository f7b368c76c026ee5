"""Resolves a service's configuration: defaults < config file < command line, then validates."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from .errors import EXIT_INVALID_CONFIG, ConfigError
from .flags import parse_flags
from .kv_sizing import GIB, blocks_for_budget, kv_block_bytes
from .model_metadata import ModelMetadata
from .schema import defaults, load_schema
from .sources import normalise, read_config_file
from .validate import validate_values


class Config:
    """A validated configuration: attribute access by flat key (cfg.max_batch_size)."""

    __slots__ = ("service", "_values", "_sources", "notes", "model_metadata")

    def __init__(
        self,
        service: str,
        values: dict[str, Any],
        sources: dict[str, str],
        notes: list[str],
        model_metadata: ModelMetadata | None,
    ) -> None:
        self.service = service
        self._values = values
        self._sources = sources
        self.notes = notes  # options accepted as not applicable here: the service logs them
        self.model_metadata = model_metadata  # scheduler only: read from model_path

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # pickle/copy probe dunders before the slots are set
            raise AttributeError(name)
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"the {self.service} has no option {name!r}") from None

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __contains__(self, name: object) -> bool:
        return name in self._values

    def source(self, name: str) -> str:
        """Where an option's value came from: 'default', 'file:<path>:<key>' or 'flag'."""
        return self._sources[name]

    def to_dict(self) -> dict[str, Any]:
        """Every option (schema order) with its resolved value."""
        return dict(self._values)

    def __repr__(self) -> str:
        return f"Config({self.service!r}, {self._values!r})"


def resolve_config(service: str, argv: Sequence[str], schema: dict[str, Any] | None = None) -> Config:
    """The validated config for argv (flags, --config-file); raises ConfigError when invalid.

    --validate / --print-schema are accepted and ignored here; load_config acts on them."""
    schema = schema if schema is not None else load_schema(service)
    flags = parse_flags(service, schema, list(argv))
    values = defaults(schema)
    sources = dict.fromkeys(values, "default")
    notes: list[str] = []
    if flags.config_file:
        from_file = normalise(read_config_file(flags.config_file), schema, service)
        values.update(from_file.values)
        sources.update({k: f"file:{flags.config_file}:{path}" for k, path in from_file.origins.items()})
        notes += from_file.notes
    values.update(flags.values)
    sources.update(dict.fromkeys(flags.values, "flag"))
    explicit = {key for key, where in sources.items() if where != "default"}

    validated = validate_values(service, schema, values, explicit)
    if validated.errors:
        raise ConfigError([_with_origin(message, sources) for message in validated.errors])
    ordered = {key: values[key] for key in schema["properties"] if key in values}
    if validated.metadata is not None:
        _derive_swap_blocks(ordered, validated.metadata)
    return Config(service, ordered, sources, notes, validated.metadata)


def _with_origin(message: str, sources: dict[str, str]) -> str:
    # A message names the flat key; say so when the user wrote it under another name.
    subject = message.split(" ", 1)[0]
    where = sources.get(subject, "")
    if where.startswith("file:"):
        written = where.rsplit(":", 1)[-1]
        if written != subject:
            return f"{message} (given as {written})"
    return message


def _derive_swap_blocks(values: dict[str, Any], metadata: ModelMetadata) -> None:
    # vLLM's swap_space is GiB per worker; our scheduler counts CPU blocks.
    if values.get("enable_swap") and values.get("swap_space_gb", 0) > 0 and values.get("num_cpu_blocks") == 0:
        block_bytes = kv_block_bytes(
            metadata, values["block_size"], values["dtype"], values["tp_size"], values["pp_size"]
        )
        values["num_cpu_blocks"] = blocks_for_budget(int(values["swap_space_gb"] * GIB), block_bytes)


def load_config(service: str, argv: Sequence[str] | None = None) -> Config:
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

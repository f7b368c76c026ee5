"""Command-line flags derived from a service schema, so flags and schema cannot drift."""

from __future__ import annotations

import argparse
import difflib
import json
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError
from .schema import flag_name, property_types


class _RaisingParser(argparse.ArgumentParser):
    """argparse that raises ConfigError instead of printing usage and exiting, so every
    bad-input path prints the same `Error: ... / Caused by:` block with status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(message)


@dataclass(slots=True)
class ParsedFlags:
    """What the command line said: explicit option values plus the loader's own switches."""

    values: dict[str, Any] = field(default_factory=dict)
    config_file: str | None = None
    validate: bool = False
    print_schema: bool = False


def _help_text(prop: dict[str, Any]) -> str:
    text = prop.get("description", "")
    if "enum" in prop:
        text += f" One of: {', '.join(map(str, prop['enum']))}."
    if "default" in prop:
        text += f" (default: {json.dumps(prop['default'])})"
    else:
        text += " (required)"
    return text.replace("%", "%%")


def build_parser(service: str, schema: dict[str, Any]) -> argparse.ArgumentParser:
    """An argparse parser with one flag per schema property (booleans get --x / --no-x)."""
    parser = _RaisingParser(
        prog=f"infermesh-{service}",
        description=schema.get("title", ""),
        allow_abbrev=False,  # a prefix of a flag must not silently mean the flag
        argument_default=argparse.SUPPRESS,  # absent flags must not override the file
    )
    parser.add_argument(
        "--config-file", metavar="FILE", help="YAML or JSON config file (flat or grouped keys)."
    )
    parser.add_argument(
        "--validate", action="store_true", help="Print the resolved configuration as JSON and exit."
    )
    parser.add_argument(
        "--print-schema", action="store_true", help="Print this service's JSON Schema and exit."
    )
    for key, prop in schema["properties"].items():
        kinds = property_types(prop)
        if "boolean" in kinds:
            parser.add_argument(
                flag_name(key), dest=key, action=argparse.BooleanOptionalAction, help=_help_text(prop)
            )
        else:
            if "enum" in prop:
                metavar = "{" + ",".join(map(str, prop["enum"])) + "}"
            else:
                metavar = "LIST" if "array" in kinds else kinds[0].upper()
            parser.add_argument(flag_name(key), dest=key, metavar=metavar, help=_help_text(prop))
    return parser


def convert_flag_value(prop: dict[str, Any], text: str) -> Any:
    """Turn flag text into the schema's type; text that does not convert is returned as is so
    that schema validation reports the type error with the field's name."""
    kinds = property_types(prop)
    if "null" in kinds and text.lower() in ("null", "none"):
        return None
    if "array" in kinds:
        return [part.strip() for part in text.split(",") if part.strip()]
    if "integer" in kinds:
        try:
            return int(text)
        except ValueError:
            pass
    if "number" in kinds:
        try:
            return float(text)
        except ValueError:
            pass
    return text


def _unknown_flag_message(token: str, parser: argparse.ArgumentParser) -> str:
    known = [opt for action in parser._actions for opt in action.option_strings]
    name = token.split("=", 1)[0]
    if not name.startswith("-"):
        return f"unexpected argument {token!r}"
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown option {name}{hint}"


def parse_flags(service: str, schema: dict[str, Any], argv: list[str]) -> ParsedFlags:
    """Parse argv against the schema's flags; unknown flags raise ConfigError with a hint."""
    parser = build_parser(service, schema)
    namespace, leftovers = parser.parse_known_args(argv)
    if leftovers:
        # The value after an unknown flag is a leftover too; name only the flags then.
        flags = [token for token in leftovers if token.startswith("-")] or leftovers
        raise ConfigError([_unknown_flag_message(token, parser) for token in flags])
    given = vars(namespace)
    parsed = ParsedFlags(
        config_file=given.pop("config_file", None),
        validate=given.pop("validate", False),
        print_schema=given.pop("print_schema", False),
    )
    for key, value in given.items():
        prop = schema["properties"][key]
        parsed.values[key] = convert_flag_value(prop, value) if isinstance(value, str) else value
    return parsed

"""Renders a service's schema as a Markdown option reference, grouped by section."""

from __future__ import annotations

import json
from typing import Any

from .schema import flag_name, load_schema, property_types, sections
from .validate import range_text


def _allowed(prop: dict[str, Any]) -> str:
    if "enum" in prop:
        return " / ".join(f"`{v}`" for v in prop["enum"])
    if {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"} & set(prop):
        return range_text(prop).removeprefix("must be ")
    if "pattern" in prop:
        return f"pattern `{prop['pattern']}`"
    return ""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(service: str) -> str:
    """One table per section: option, flag, type, default, allowed values, description."""
    schema = load_schema(service)
    props = schema["properties"]
    lines = [f"# infermesh-{service} options", "", schema.get("description", ""), ""]
    for section, keys in sections(schema).items():
        lines += [f"## {section}", "", "| option | flag | type | default | allowed | description |",
                  "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for key in keys:
            prop = props[key]
            default = "**required**" if key in schema["required"] else f"`{json.dumps(prop.get('default'))}`"
            notes = prop["description"]
            if "x-unsupported" in prop:
                notes += f" Not supported yet: {prop['x-unsupported']}"
            if "x-applies-when" in prop:
                conditions = ", ".join(f"{k} = {json.dumps(v)}" for k, v in prop["x-applies-when"].items())
                notes += f" Applies only when {conditions}."
            flag = flag_name(key)
            if "boolean" in property_types(prop):
                flag += f" / --no-{key.replace('_', '-')}"
            row = [f"`{key}`", f"`{flag}`", "/".join(property_types(prop)), default, _allowed(prop), notes]
            lines.append("| " + " | ".join(_cell(cell) for cell in row) + " |")
        lines.append("")
    return "\n".join(lines)

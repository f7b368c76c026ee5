"""The schemas themselves: valid draft 2020-12, every option fully described, seed 000 covered."""

from __future__ import annotations

import pytest
from infermesh_shared.config import SERVICES, load_schema
from infermesh_shared.config.reference import render_markdown
from infermesh_shared.config.schema import property_types
from jsonschema import Draft202012Validator

# Seed 000's tables: every row, with the seed's default where infermesh keeps it.
SEED_000_ROWS = {
    "worker_endpoint": None,  # ZeroMQ endpoint there; here "" = register on the main port
    "worker_timeout_ms": 30000,
    "num_workers": 1,
    "model_path": None,  # required
    "dtype": "auto",
    "enable_flash_attn": True,
    "custom_config": None,
    "block_size": 16,
    "total_blocks": 1000,
    "gpu_memory_utilization": 0.9,
    "enable_prefix_cache": True,
    "prefix_cache_capacity": 100000,
    "enable_cow": True,
    "policy": "continuous",
    "max_batch_size": 256,
    "max_tokens_per_step": 4096,
    "enable_preemption": True,
    "preemption_threshold": 0,
    "enable_swap": False,
    "default_priority": 0,
    "idle_sleep_ms": 1,
    "tp_size": 1,
    "pp_size": 1,
    "log_level": "info",
    "log_format": "text",
    "log_to_file": False,
    "log_file": None,  # /tmp/infermesh-scheduler.log
}


@pytest.mark.parametrize("service", SERVICES)
def test_schema_is_valid_draft_2020_12(service):
    schema = load_schema(service)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)
    assert schema["additionalProperties"] is False


@pytest.mark.parametrize("service", SERVICES)
def test_every_option_has_type_default_range_and_description(service):
    schema = load_schema(service)
    for key, prop in schema["properties"].items():
        kinds = property_types(prop)
        assert prop.get("description", "").strip(), f"{service}.{key}: no description"
        assert "type" in prop, f"{service}.{key}: no type"
        assert "x-section" in prop and prop["x-section"].endswith("_config"), f"{service}.{key}: no x-section"
        assert "default" in prop or key in schema["required"], (
            f"{service}.{key}: neither default nor required"
        )
        if {"integer", "number"} & set(kinds):
            assert {"minimum", "exclusiveMinimum", "maximum", "enum"} & set(prop), (
                f"{service}.{key}: no range"
            )
        if "default" in prop:  # a default must satisfy its own property's rules
            errors = list(Draft202012Validator(prop).iter_errors(prop["default"]))
            assert not errors, (
                f"{service}.{key}: default {prop['default']!r} breaks its schema: {errors[0].message}"
            )
        for other in prop.get("x-applies-when", {}):
            assert other in schema["properties"], f"{service}.{key}: x-applies-when names unknown {other}"


def test_scheduler_schema_covers_seed_000():
    props = load_schema("scheduler")["properties"]
    missing = sorted(set(SEED_000_ROWS) - set(props))
    assert not missing
    for key, seed_default in SEED_000_ROWS.items():
        if seed_default is not None:
            assert props[key]["default"] == seed_default, key
    assert props["log_level"]["enum"] == ["trace", "debug", "info", "warn", "error"]
    assert props["dtype"]["enum"] == ["auto", "bf16", "fp16", "fp32"]
    assert "model_path" in load_schema("scheduler")["required"]


@pytest.mark.parametrize("service", SERVICES)
def test_markdown_reference_lists_every_option(service):
    text = render_markdown(service)
    for key in load_schema(service)["properties"]:
        assert f"| `{key}` | `--{key.replace('_', '-')}" in text

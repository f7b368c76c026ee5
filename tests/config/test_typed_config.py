"""The typed configuration is generated from the schemas and is their only copy: every option is
exactly one frozen field with the schema's type and default, readable by its flat name."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
from infermesh_scheduler.core.config import SchedulerCoreConfig
from infermesh_shared.config import CONFIG_CLASSES, ConfigError, config_from_options, load_schema
from infermesh_shared.config.schema import property_types
from infermesh_shared.config.typed import field_type, frozen_value, service_class


def section_fields(cls: type) -> dict[str, list[tuple[str, dataclasses.Field]]]:
    """Option name -> every (section, field) that declares it."""
    found: dict[str, list[tuple[str, dataclasses.Field]]] = {}
    for section, section_cls in cls.section_classes.items():
        for f in dataclasses.fields(section_cls):
            found.setdefault(f.name, []).append((section, f))
    return found


@pytest.mark.parametrize("service", sorted(CONFIG_CLASSES))
def test_every_schema_property_is_exactly_one_field_with_its_default(service):
    schema = load_schema(service)
    cls = CONFIG_CLASSES[service]
    found = section_fields(cls)
    assert set(found) == set(schema["properties"])
    for key, prop in schema["properties"].items():
        assert len(found[key]) == 1, f"{key} is declared in {[s for s, _ in found[key]]}"
        ((section, f),) = found[key]
        assert section == prop.get("x-section", "general_config"), key
        assert f.type == field_type(prop), key
        if "default" in prop:
            assert f.default == frozen_value(prop["default"]), key
        else:
            assert key in schema.get("required", []), key
            assert f.default is dataclasses.MISSING, key
    assert cls.option_names == tuple(schema["properties"])


def test_an_option_added_to_a_schema_is_a_field_at_once():
    schema = load_schema("worker")
    schema["properties"]["drain_probe_ms"] = {
        "type": "integer",
        "default": 1234,
        "description": "test option",
        "x-section": "network_config",
    }
    cls = service_class("worker", schema)
    network = cls.section_classes["network_config"](scheduler_address="127.0.0.1:1")
    cfg = cls(
        **{
            name: (network if name == "network_config" else sec())
            for name, sec in cls.section_classes.items()
        }
    )
    assert cfg.drain_probe_ms == 1234 and cfg.network_config.drain_probe_ms == 1234


def test_a_name_clash_between_an_option_and_a_section_is_refused():
    schema = load_schema("worker")
    schema["properties"]["memory_config"] = {"type": "integer", "default": 1, "x-section": "device_config"}
    with pytest.raises(RuntimeError, match="clash"):
        service_class("worker", schema)


def test_config_is_frozen_typed_and_read_by_flat_or_section_name(tmp_path):
    cfg = config_from_options("worker", scheduler_address="127.0.0.1:5", num_threads=2)
    assert type(cfg).__name__ == "WorkerConfig"
    assert cfg.num_threads == cfg.device_config.num_threads == 2
    assert cfg.source("num_threads") == "argument" and cfg.source("port") == "default"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.device_config.num_threads = 3  # type: ignore[misc]
    with pytest.raises(AttributeError, match="no option 'num_thread' \\(did you mean 'num_threads'\\?\\)"):
        _ = cfg.num_thread
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    assert cfg.to_dict()["scheduler_address"] == "127.0.0.1:5"


def test_config_from_options_refuses_like_the_command_line():
    with pytest.raises(ConfigError, match="num_threads must be >= 0"):
        config_from_options("worker", scheduler_address="127.0.0.1:5", num_threads=-1)
    with pytest.raises(ConfigError, match="no option 'num_thread'"):
        config_from_options("worker", scheduler_address="127.0.0.1:5", num_thread=1)


def test_the_core_config_takes_its_options_typed_and_defaulted_as_the_schema():
    props = load_schema("scheduler")["properties"]
    shared = [f for f in dataclasses.fields(SchedulerCoreConfig) if f.name in props]
    assert len(shared) > 15
    for f in shared:
        prop = props[f.name]
        if f.name in ("max_model_len", "max_inflight_plans"):
            continue  # the core holds these resolved (the config's 0 means "from the model")
        assert f.default == prop["default"], f.name
        assert f.type in {
            kind.__name__ for kind in [field_type({"type": t}) for t in property_types(prop)]
        }, f.name

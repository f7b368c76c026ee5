"""Typed configuration generated from the JSON schemas when this module is imported.

Each service gets one frozen dataclass (SchedulerConfig, WorkerConfig, FrontendConfig) holding
one frozen dataclass per x-section of its schema (cfg.memory_config.block_size); every option is
also readable by its flat name (cfg.block_size), which is how the schema and the flags name it.
Fields, types, defaults and docs come from the schema only, so an option added to a schema is a
typed field at the next import with nothing else to edit. Lists become tuples (frozen)."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Mapping
from types import MappingProxyType, NoneType
from typing import Any

from .errors import ConfigError
from .model_metadata import ModelMetadata
from .schema import SERVICES, defaults, load_schema, property_types, sections
from .sources import did_you_mean

_PY_TYPES: dict[str, Any] = {
    "integer": int,
    "number": float,
    "string": str,
    "boolean": bool,
    "array": tuple,
    "object": dict,
    "null": NoneType,
}
# Attributes of a service config that are not options: they must not collide with an option.
_META_FIELDS = ("notes", "sources", "model_metadata")


def class_name(service: str, section: str = "") -> str:
    """memory_config of the scheduler -> SchedulerMemoryConfig; the service itself -> SchedulerConfig."""
    words = [service, *section.removesuffix("_config").split("_")] if section else [service]
    return "".join(word.capitalize() for word in words if word) + "Config"


def field_type(prop: dict[str, Any]) -> Any:
    """The Python type of a schema property (a union when it accepts several JSON types)."""
    kinds = [_PY_TYPES[kind] for kind in property_types(prop)]
    result = kinds[0]
    for kind in kinds[1:]:
        result = result | kind
    return result


def frozen_value(value: Any) -> Any:
    """A schema value as a frozen field holds it: lists become tuples."""
    if isinstance(value, list):
        return tuple(frozen_value(item) for item in value)
    return value


def _section_class(service: str, section: str, keys: list[str], schema: dict[str, Any]) -> type:
    props = schema["properties"]
    required = [key for key in keys if "default" not in props[key]]
    specs: list[tuple[str, Any, Any]] = []
    for key in required + [key for key in keys if key not in required]:
        prop = props[key]
        meta = {"description": prop.get("description", ""), "schema": MappingProxyType(prop)}
        if key in required:
            spec = dataclasses.field(metadata=meta)
        else:
            spec = dataclasses.field(default=frozen_value(copy.deepcopy(prop["default"])), metadata=meta)
        specs.append((key, field_type(prop), spec))
    cls = dataclasses.make_dataclass(
        class_name(service, section), specs, frozen=True, slots=True, kw_only=True
    )
    cls.__module__ = __name__
    cls.__doc__ = f"The {section} options of the {service} (generated from {service}.schema.json)."
    return cls


def _flat_reader(section: str, key: str) -> property:
    def read(self: Any) -> Any:
        return getattr(getattr(self, section), key)

    return property(read, doc=f"{section}.{key}")


def _to_dict(self: Any) -> dict[str, Any]:
    """Every option by flat name, in schema order, with its resolved value (JSON-ready)."""
    return {key: _json_value(getattr(self, key)) for key in self.option_names}


def _json_value(value: Any) -> Any:
    return [_json_value(item) for item in value] if isinstance(value, tuple) else value


def _source(self: Any, name: str) -> str:
    """Where an option's value came from: 'default', 'file:<path>:<key>' or 'flag'."""
    if name not in self.option_names:
        raise KeyError(name)
    return self.sources.get(name, "default")


def _no_such_option(self: Any, name: str) -> Any:
    # Only reached when no field or flat option has this name.
    if name.startswith("_"):
        raise AttributeError(name)
    raise AttributeError(f"the {self.service} has no option {name!r}{did_you_mean(name, self.option_names)}")


def service_class(service: str, schema: dict[str, Any]) -> type:
    """The config class of a service as generated from a schema (the loaded ones are below)."""
    groups = sections(schema)
    clashes = (set(groups) | set(_META_FIELDS)) & set(schema["properties"])
    if clashes:
        raise RuntimeError(f"{service}.schema.json: option names clash with section names: {clashes}")
    section_classes = {name: _section_class(service, name, keys, schema) for name, keys in groups.items()}
    specs: list[tuple[str, Any, Any]] = [(name, cls) for name, cls in section_classes.items()]  # type: ignore[misc]
    specs += [
        ("notes", tuple[str, ...], dataclasses.field(default=(), compare=False)),
        (
            "sources",
            Mapping[str, str],
            dataclasses.field(default_factory=lambda: MappingProxyType({}), compare=False),
        ),
        ("model_metadata", ModelMetadata | None, dataclasses.field(default=None, compare=False, repr=False)),
    ]
    namespace: dict[str, Any] = {
        "service": service,
        "option_names": tuple(schema["properties"]),
        "section_of": MappingProxyType({key: name for name, keys in groups.items() for key in keys}),
        "section_classes": MappingProxyType(section_classes),
        "to_dict": _to_dict,
        "__getattr__": _no_such_option,
        "source": _source,
    }
    for name, keys in groups.items():
        for key in keys:
            namespace[key] = _flat_reader(name, key)
    cls = dataclasses.make_dataclass(
        class_name(service),
        specs,
        frozen=True,
        slots=True,
        kw_only=True,
        namespace=namespace,
    )
    cls.__module__ = __name__
    cls.__doc__ = (
        f"The {service}'s validated configuration: one field per x-section of {service}.schema.json, "
        "every option also readable by its flat name. notes: options accepted as not applicable "
        "(the service logs them); sources: where each option came from; model_metadata: the "
        "scheduler's model config.json as read while validating."
    )
    return cls


SchedulerConfig = service_class("scheduler", load_schema("scheduler"))
WorkerConfig = service_class("worker", load_schema("worker"))
FrontendConfig = service_class("frontend", load_schema("frontend"))
ReschedulerConfig = service_class("rescheduler", load_schema("rescheduler"))
CONFIG_CLASSES: dict[str, type] = {
    "scheduler": SchedulerConfig,
    "worker": WorkerConfig,
    "frontend": FrontendConfig,
    "rescheduler": ReschedulerConfig,
}
assert set(CONFIG_CLASSES) == set(SERVICES)
# The section classes by name too (SchedulerMemoryConfig, FrontendRoutingConfig, ...), so a
# consumer can name the slice it takes and a test can build one with the schema's defaults.
for _service_cls in CONFIG_CLASSES.values():
    for _section_cls in _service_cls.section_classes.values():
        globals()[_section_cls.__name__] = _section_cls

ServiceConfig = Any  # one of the four classes above; their fields are generated


def unknown_option_errors(service: str, names: Iterable[str]) -> list[str]:
    """One message per name that is not an option of the service, with the closest one."""
    known = CONFIG_CLASSES[service].option_names
    return [
        f"the {service} has no option {name!r}{did_you_mean(name, known)}"
        for name in names
        if name not in known
    ]


def build_config(
    service: str,
    values: Mapping[str, Any],
    sources: Mapping[str, str] | None = None,
    notes: list[str] | tuple[str, ...] = (),
    model_metadata: ModelMetadata | None = None,
) -> ServiceConfig:
    """The typed config of already validated flat values (missing options take their default)."""
    cls = CONFIG_CLASSES[service]
    errors = unknown_option_errors(service, values)
    if errors:
        raise ConfigError(errors)
    grouped: dict[str, dict[str, Any]] = {name: {} for name in cls.section_classes}
    for key, value in values.items():
        grouped[cls.section_of[key]][key] = frozen_value(value)
    return cls(
        **{name: section_cls(**grouped[name]) for name, section_cls in cls.section_classes.items()},
        notes=tuple(notes),
        sources=dict(sources or {}),
        model_metadata=model_metadata,
    )


def replace_options(cfg: ServiceConfig, **options: Any) -> ServiceConfig:
    """A copy of cfg with some flat options changed (not re-validated: for derived values)."""
    values = {key: getattr(cfg, key) for key in cfg.option_names}
    values.update(options)
    return build_config(cfg.service, values, cfg.sources, cfg.notes, cfg.model_metadata)


def default_values(service: str) -> dict[str, Any]:
    """Every option's schema default (required options are absent)."""
    return defaults(load_schema(service))

"""`infermesh up --rescheduler-arg KEY=VALUE`: seed 001's rescheduling options for the frontend's
colocated rescheduler, as frontend flags. enable_rescheduling=true also turns the colocated mode on
(the frontend then runs the loop); the frontend validates the values like any other flag."""

from __future__ import annotations

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def rescheduling_options() -> dict[str, dict]:
    """The frontend's rescheduling options (its rescheduling_config section), by name."""
    from infermesh_shared.config import load_schema

    props = load_schema("frontend")["properties"]
    return {key: prop for key, prop in props.items() if prop["x-section"] == "rescheduling_config"}


def rescheduler_flags(pairs: list[str]) -> list[str]:
    """Frontend flags for KEY=VALUE pairs; raises ValueError naming a bad pair."""
    options = rescheduling_options()
    flags: list[str] = []
    given: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not sep or not key:
            raise ValueError(f"--rescheduler-arg {pair!r} is not KEY=VALUE (e.g. enable_rescheduling=true)")
        if key not in options:
            raise ValueError(
                f"--rescheduler-arg {key!r} is not a rescheduling option; they are: {', '.join(options)}"
            )
        flag = "--" + key.replace("_", "-")
        if options[key]["type"] == "boolean":
            word = value.strip().lower()
            if word not in _TRUE + _FALSE:
                raise ValueError(f"--rescheduler-arg {key} takes true or false, got {value!r}")
            flags.append(flag if word in _TRUE else "--no-" + flag[2:])
            given[key] = "true" if word in _TRUE else "false"
        else:
            flags.append(f"{flag}={value}")
            given[key] = value
    if given.get("enable_rescheduling") == "true" and "colocated_rescheduling_mode" not in given:
        flags.append("--colocated-rescheduling-mode")
    return flags

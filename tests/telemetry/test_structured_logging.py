"""Logs are text or JSON lines, honour level and file options, and carry the current trace id."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from infermesh_shared.telemetry import TRACE, configure_logging, get_tracer, parse_log_level

from tests.telemetry.otlp_collector import OtlpCollector

pytestmark = pytest.mark.usefixtures("restore_root_logging")


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_json_lines_carry_trace_and_span_ids(tmp_path: Path, traced_process: OtlpCollector) -> None:
    log_file = tmp_path / "logs" / "svc.log"  # the directory does not exist yet
    configure_logging("svc-a", "info", "json", to_file=True, file_path=str(log_file))
    log = logging.getLogger("infermesh.test")
    log.info("outside any span")
    with get_tracer("test").start_as_current_span("work") as span:
        log.info("inside %s", "work", extra={"request_id": "r-1"})
    entries = [json.loads(line) for line in _lines(log_file)]
    assert [e["message"] for e in entries] == ["outside any span", "inside work"]
    outside, inside = entries
    assert (outside["trace_id"], outside["span_id"]) == ("", "")
    ctx = span.get_span_context()
    assert inside["trace_id"] == format(ctx.trace_id, "032x")
    assert inside["span_id"] == format(ctx.span_id, "016x")
    assert inside["service"] == "svc-a"
    assert inside["level"] == "INFO"
    assert inside["logger"] == "infermesh.test"
    assert inside["request_id"] == "r-1"


def test_text_lines_and_levels(tmp_path: Path) -> None:
    log_file = tmp_path / "svc.log"
    configure_logging("svc-b", "warn", "text", to_file=True, file_path=str(log_file))
    log = logging.getLogger("infermesh.test")
    log.info("dropped at warn")
    log.warning("kept at warn")
    (line,) = _lines(log_file)
    assert "WARNING svc-b infermesh.test trace_id= span_id= kept at warn" in line

    configure_logging("svc-b", "trace", "text", to_file=True, file_path=str(log_file))
    log.log(TRACE, "per-step detail")
    assert "TRACE svc-b infermesh.test" in _lines(log_file)[-1]
    assert len(logging.getLogger().handlers) == len({id(h) for h in logging.getLogger().handlers})


def test_reconfiguring_replaces_handlers(tmp_path: Path) -> None:
    before = len(logging.getLogger().handlers)
    configure_logging("svc-c", "info", "text", to_file=True, file_path=str(tmp_path / "a.log"))
    configure_logging("svc-c", "info", "text", to_file=False)
    assert len(logging.getLogger().handlers) == before + 1  # only stderr is left
    logging.getLogger("x").info("not in the old file")
    assert _lines(tmp_path / "a.log") == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"level": "verbose"}, "unknown log level 'verbose'"),
        ({"fmt": "xml"}, "unknown log format 'xml'"),
        ({"to_file": True, "file_path": ""}, "log_file is empty"),
    ],
)
def test_bad_options_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        configure_logging("svc", **kwargs)


def test_level_names() -> None:
    assert [parse_log_level(n) for n in ("trace", "debug", "info", "warn", "error")] == [
        logging.DEBUG - 5,
        logging.DEBUG,
        logging.INFO,
        logging.WARNING,
        logging.ERROR,
    ]

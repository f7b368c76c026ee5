"""Service logging: text or JSON lines, each record carrying the current trace and span ids."""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from pathlib import Path
from typing import Any

from opentelemetry import trace

from infermesh_shared.telemetry.grpc_core_log import quiet_client_gone

# Below DEBUG, for per-token and per-step detail (seed 000's `trace` level).
TRACE = logging.DEBUG - 5
logging.addLevelName(TRACE, "TRACE")

LOG_LEVELS: dict[str, int] = {
    "trace": TRACE,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}
LOG_FORMATS = ("text", "json")

_TEXT_FORMAT = (
    "%(asctime)s %(levelname)s %(service)s %(name)s trace_id=%(trace_id)s span_id=%(span_id)s %(message)s"
)

# Attributes every LogRecord has; anything else on a record came from `extra=` and is logged.
_STANDARD_RECORD_KEYS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
_OWN_KEYS = frozenset({"service", "trace_id", "span_id"})


class TraceContextFilter(logging.Filter):
    """Stamps each record with the service name and the current span's trace and span ids."""

    def __init__(self, service_name: str) -> None:
        super().__init__()
        self.service_name = service_name

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service_name
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            record.trace_id = format(ctx.trace_id, "032x")
            record.span_id = format(ctx.span_id, "016x")
        else:
            record.trace_id = ""
            record.span_id = ""
        return True


class JsonLineFormatter(logging.Formatter):
    """One JSON object per line: time, level, service, logger, message, trace ids, extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": dt.datetime.fromtimestamp(record.created, tz=dt.timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "service": getattr(record, "service", ""),
            "logger": record.name,
            "message": record.getMessage(),
            "trace_id": getattr(record, "trace_id", ""),
            "span_id": getattr(record, "span_id", ""),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_RECORD_KEYS and key not in _OWN_KEYS:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def parse_log_level(name: str) -> int:
    """The logging level for a config name (trace/debug/info/warn/error); ValueError otherwise."""
    try:
        return LOG_LEVELS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {name!r}; use one of: {', '.join(LOG_LEVELS)}") from None


def configure_logging(
    service_name: str,
    level: str = "info",
    fmt: str = "text",
    to_file: bool = False,
    file_path: str = "",
) -> None:
    """Routes the root logger to stderr (and to `file_path` when `to_file`) in `fmt`.

    Replaces handlers installed by an earlier call, so calling it twice is safe. Raises
    ValueError for an unknown level or format, or `to_file` without a path; OSError when the
    log file cannot be opened (its directory is created if missing).
    """
    numeric_level = parse_log_level(level)
    if fmt not in LOG_FORMATS:
        raise ValueError(f"unknown log format {fmt!r}; use one of: {', '.join(LOG_FORMATS)}")
    if to_file and not file_path:
        raise ValueError("log_to_file is on but log_file is empty; give a log file path")
    formatter: logging.Formatter = JsonLineFormatter() if fmt == "json" else logging.Formatter(_TEXT_FORMAT)
    context_filter = TraceContextFilter(service_name)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if to_file:
        path = Path(file_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(path, encoding="utf-8"))
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_infermesh_handler", False)]:
        root.removeHandler(old)
        old.close()
    for handler in handlers:
        handler._infermesh_handler = True  # type: ignore[attr-defined]
        handler.setFormatter(formatter)
        handler.addFilter(context_filter)
        root.addHandler(handler)
    root.setLevel(numeric_level)
    quiet_client_gone()


def configure_service_logging(cfg: Any) -> None:
    """configure_logging from a service's resolved config (log_level, log_format, log_to_file,
    log_file); a log file that cannot be opened ends the process like any invalid option:
    the seed's error block on stderr and exit status 2."""
    try:
        configure_logging(cfg.service_name, cfg.log_level, cfg.log_format, cfg.log_to_file, cfg.log_file)
    except OSError as err:
        cause = f"log_file {cfg.log_file!r} cannot be opened for writing ({err.strerror})"
    except ValueError as err:
        cause = str(err)
    else:
        return
    print(f"Error: Configuration validation failed\n  Caused by: {cause}", file=sys.stderr)
    raise SystemExit(2)

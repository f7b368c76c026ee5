"""The shipped Grafana dashboard queries only metrics (and labels) the services really export.

The exported set comes from the services' own metric classes, exercised so that labelled series
exist, and collected through the same registry type the services serve /metrics from.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import grpc
import pytest
from infermesh_frontend.routing.routing_metrics import RoutingMetrics
from infermesh_shared.telemetry import (
    CacheConfig,
    RequestMetrics,
    SchedulerLoadFigures,
    SchedulerMetrics,
    WorkerMetrics,
    create_registry,
)

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "infermesh-dashboard.json"
# A metric selector: name{label matchers}.
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}")
# Labels Prometheus adds at scrape time.
_TARGET_LABELS = {"instance", "job"}
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*"([^"]*)"')


def _exported() -> dict[str, dict[str, set[str]]]:
    """service -> sample name -> label names, from every service's metric classes."""
    figures = SchedulerLoadFigures(1, 2, 0.5, 10, 5, 1, total_blocks=64)
    frontend, scheduler, worker = (
        create_registry("frontend"),
        create_registry("scheduler"),
        create_registry("worker"),
    )
    for registry in (frontend, scheduler):
        requests = RequestMetrics(registry)
        requests.request_finished(4, 8, "stop", 0.5)
        requests.request_ended(grpc.StatusCode.CANCELLED)
    RoutingMetrics(frontend)
    SchedulerMetrics(scheduler, lambda: figures, CacheConfig(16, "bf16", True, False))
    WorkerMetrics(worker)
    exported: dict[str, dict[str, set[str]]] = {}
    for service, registry in (("frontend", frontend), ("scheduler", scheduler), ("worker", worker)):
        names = exported.setdefault(service, {})
        for family in registry.collect():
            for sample in family.samples:
                names.setdefault(sample.name, set()).update(sample.labels)
    return exported


def _queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [
        (panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            queries.append((f"variable {variable['name']}", variable["definition"]))
    return queries


def test_dashboard_has_the_panels_an_operator_looks_for() -> None:
    titles = " ".join(panel["title"] for panel in json.loads(DASHBOARD.read_text())["panels"]).lower()
    for topic in ("time to first token", "time per output token", "throughput", "kv cache", "queue"):
        assert topic in titles


@pytest.mark.parametrize("title,expr", _queries(), ids=lambda value: value[:40])
def test_every_query_names_an_exported_metric_of_its_service(title: str, expr: str) -> None:
    exported = _exported()
    every_service = {name: labels for names in exported.values() for name, labels in names.items()}
    label_values = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", expr)
    if label_values:
        name, label = label_values.groups()
        assert label in every_service[name], f"{title}: {name} has no label {label}"
        return
    selectors = _SELECTOR.findall(expr)
    assert selectors, f"{title}: every query selects its series by service: {expr}"
    for name, matchers in selectors:
        labels = dict(_MATCHER.findall(matchers))
        service = labels.get("service")
        assert service in exported, f"{title}: {name} must be selected by service, got {labels}"
        assert name in exported[service], f"{title}: the {service} does not export {name}"
        unknown = set(labels) - exported[service][name]
        assert not unknown, f"{title}: {name} has no label(s) {sorted(unknown)}"
    # Labels a query groups or filters by must exist on the metrics it reads.
    for grouped in re.findall(r"by \(([^)]*)\)", expr):
        for label in {part.strip() for part in grouped.split(",")} - _TARGET_LABELS:
            assert any(label in exported[dict(_MATCHER.findall(m))["service"]][n] for n, m in selectors), (
                f"{title}: no queried metric has the label {label}"
            )

"""A Prometheus registry that stamps every series with the service and the model it serves.

The frontend and the scheduler export the same request metrics; without a label to tell them
apart `sum(infermesh_requests_total)` counts every request twice. Stamping at collect time keeps
the label set in one place, covers collectors we do not own (process_*, python_*), and lets the
model name arrive after the registry exists (the frontend learns it from the scheduler).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

SERVICE_LABEL = "service"
MODEL_NAME_LABEL = "model_name"


class ServiceRegistry(CollectorRegistry):
    """Adds `service` and `model_name` labels to every sample it collects."""

    def __init__(self, service: str, model_name: str = "") -> None:
        super().__init__(auto_describe=True)
        self.service = service
        # Empty until known; a series never changes its label set mid-run except this one value.
        self.model_name = model_name

    def collect(self) -> Iterator[Metric]:
        stamp = {SERVICE_LABEL: self.service, MODEL_NAME_LABEL: self.model_name}
        for metric in super().collect():
            stamped = Metric(metric.name, metric.documentation, metric.type, metric.unit)
            stamped.samples = [
                sample._replace(labels={**stamp, **sample.labels}) for sample in metric.samples
            ]
            yield stamped

    def get_sample_value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """As CollectorRegistry's; the service and model labels need not be given, every sample has them."""
        stamp = {SERVICE_LABEL: self.service, MODEL_NAME_LABEL: self.model_name}
        return super().get_sample_value(name, {**stamp, **(labels or {})})

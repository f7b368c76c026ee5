"""The scheduler's core: pure-Python continuous batching over paged KV blocks (no I/O)."""

from infermesh_scheduler.core.config import SchedulerCoreConfig
from infermesh_scheduler.core.errors import (
    EndReason,
    InvalidRequestError,
    QueueFullError,
    Refusal,
    RequestRefused,
)
from infermesh_scheduler.core.load import LoadSnapshot
from infermesh_scheduler.core.request import (
    AdmissionError,
    FinishReason,
    PriorityClass,
    RequestOutput,
    RequestSpec,
    SamplingOptions,
    Usage,
)
from infermesh_scheduler.core.scheduler import Scheduler
from infermesh_scheduler.core.step_plan import (
    BlockMove,
    NewSequence,
    RunningSequence,
    SampledToken,
    StepPlan,
)

__all__ = [
    "AdmissionError",
    "BlockMove",
    "EndReason",
    "FinishReason",
    "InvalidRequestError",
    "LoadSnapshot",
    "NewSequence",
    "PriorityClass",
    "QueueFullError",
    "Refusal",
    "RequestRefused",
    "RequestOutput",
    "RequestSpec",
    "RunningSequence",
    "SampledToken",
    "SamplingOptions",
    "Scheduler",
    "SchedulerCoreConfig",
    "StepPlan",
    "Usage",
]

"""The scheduler answers every outcome of its core with one gRPC status from one table."""

from __future__ import annotations

import grpc
from infermesh_scheduler.core import EndReason, InvalidRequestError, QueueFullError, Refusal
from infermesh_scheduler.core.request import AdmissionError
from infermesh_scheduler.status_table import END_STATUS, REFUSAL_STATUS, status_of_end, status_of_refusal


def test_every_core_outcome_has_a_status() -> None:
    assert set(REFUSAL_STATUS) == set(Refusal)
    assert set(END_STATUS) == set(EndReason)


def test_refusals_and_ends_map_to_their_statuses() -> None:
    assert status_of_refusal(InvalidRequestError("bad")) == (grpc.StatusCode.INVALID_ARGUMENT, "bad")
    assert status_of_refusal(QueueFullError("block", "full")) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "full")
    late = AdmissionError(EndReason.DEADLINE, "too late")
    assert status_of_end(late) == (grpc.StatusCode.DEADLINE_EXCEEDED, "too late")
    dropped = AdmissionError(EndReason.DROPPED_FOR_NEWER, "dropped")
    assert status_of_end(dropped) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "dropped")


def test_the_core_names_no_grpc_status() -> None:
    import pathlib

    import infermesh_scheduler.core as core

    for path in pathlib.Path(core.__file__).parent.glob("*.py"):
        text = path.read_text()
        assert "grpc" not in text and "StatusCode" not in text, f"{path.name} names gRPC"

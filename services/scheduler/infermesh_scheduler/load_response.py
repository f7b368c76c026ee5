"""The GetLoad answer built from the core's load snapshot (the servicer's and `infermesh simulate`'s)."""

from __future__ import annotations

import dataclasses

from infermesh.v1 import scheduler_pb2

from infermesh_scheduler.core.load import LoadSnapshot

_LOAD_FIELDS = frozenset(scheduler_pb2.GetLoadResponse.DESCRIPTOR.fields_by_name)
_COPIED = tuple(
    f.name for f in dataclasses.fields(LoadSnapshot) if f.name in _LOAD_FIELDS and f.name != "serving"
)


def load_response(snapshot: LoadSnapshot | None, serving: bool) -> scheduler_pb2.GetLoadResponse:
    """Every snapshot field the proto has, plus `serving` (None: no core yet, only the flag)."""
    response = scheduler_pb2.GetLoadResponse(serving=serving)
    if snapshot is not None:
        for name in _COPIED:
            value = getattr(snapshot, name)
            if name == "cached_prefix_hashes":
                response.cached_prefix_hashes.extend(value)
            else:
                setattr(response, name, value)
    return response

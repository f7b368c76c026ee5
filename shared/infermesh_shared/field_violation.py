"""The request field an INVALID_ARGUMENT is about, carried as data beside the message.

The refusing service names the field (a path in its own request message, e.g.
"sampling.max_tokens") in the status details, as google.rpc.BadRequest (the Google API error
model, read by any gRPC client that knows it); a caller reads it back to name the field to its
own client (OpenAI's error `param`) without parsing the message.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

# gRPC's trailing-metadata key for a serialized google.rpc.Status.
STATUS_DETAILS_KEY = "grpc-status-details-bin"


def field_violation_metadata(
    code: grpc.StatusCode, message: str, field: str | None
) -> tuple[tuple[str, bytes], ...]:
    """Trailing metadata naming `field` for a call that ends with `code` and `message`; empty
    when no field is named."""
    if not field:
        return ()
    violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=message)
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    status = status_pb2.Status(code=code.value[0], message=message, details=[detail])
    return ((STATUS_DETAILS_KEY, status.SerializeToString()),)


def violated_field(trailing_metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The first field a call's status details name as violated, or None."""
    for key, value in trailing_metadata or ():
        if key != STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            bad_request = error_details_pb2.BadRequest()
            if detail.Unpack(bad_request) and bad_request.field_violations:
                return bad_request.field_violations[0].field
    return None

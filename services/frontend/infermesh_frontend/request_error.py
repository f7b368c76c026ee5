"""A request that fails with a gRPC status: the servicer turns it into the client's status."""

from __future__ import annotations

import grpc

# The client fields a scheduler's refusal can be about, by the SubmitRequest field it names;
# sampling.* fields carry the client's own names (ClientSamplingParams = SamplingParams' names).
# Fields the frontend fills itself (request_id, resumed_output_token_ids) name no client field.
_CLIENT_FIELDS = {"prompt_token_ids": "prompt", "priority": "priority", "priority_class": "priority_class"}


def client_field(submit_field: str | None) -> str | None:
    """The request field a client knows by, for the SubmitRequest field a scheduler refused."""
    if submit_field is None:
        return None
    if submit_field.startswith("sampling."):
        return submit_field.removeprefix("sampling.")
    return _CLIENT_FIELDS.get(submit_field)


class RequestError(Exception):
    """Ends a request with `code` and a message a person can act on; `param` names the request
    field at fault when one is (GenerateInput's name, which is OpenAI's error `param` too)."""

    def __init__(self, code: grpc.StatusCode, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param

"""The names the OpenAI API serves the model under (vLLM's --served-model-name)."""

from __future__ import annotations

from infermesh.v1 import common_pb2

from infermesh_frontend.openai_http.api_error import ApiError


class ServedModels:
    """Configured names, or the scheduler's model name when none are configured."""

    def __init__(self, names: list[str] | None = None) -> None:
        self._names = list(dict.fromkeys(names or []))

    def names(self, model: common_pb2.ModelInfo) -> list[str]:
        """Every name a request may use, the primary one first."""
        return self._names or [model.model_name]

    def resolve(self, requested: str, model: common_pb2.ModelInfo) -> str:
        """`requested` when it is served; a 404 model_not_found otherwise."""
        names = self.names(model)
        if requested in names:
            return requested
        raise ApiError(
            404,
            f"model {requested!r} is not served here; this server serves "
            f"{', '.join(repr(n) for n in names)} (see /v1/models)",
            param="model",
            code="model_not_found",
        )


def model_card(name: str, model: common_pb2.ModelInfo) -> dict[str, object]:
    """One /v1/models entry, as vLLM lists it."""
    return {
        "id": name,
        "object": "model",
        "created": 0,
        "owned_by": "infermesh",
        "root": model.model_name,
        "parent": None,
        "max_model_len": model.max_model_len,
    }

"""LoadModel's config_overrides_json may stretch the context, never change the architecture."""

from __future__ import annotations

import json

import pytest
from infermesh_worker.errors import InvalidArgumentError
from infermesh_worker.model_config import checked_overrides

CONFIG = {"num_hidden_layers": 4, "hidden_size": 64, "max_position_embeddings": 512, "vocab_size": 256}


@pytest.mark.parametrize(
    "overrides",
    [{"num_hidden_layers": 1}, {"hidden_size": 32}, {"vocab_size": 128}, {"num_experts": 8}],
)
def test_an_architecture_key_cannot_be_overridden(overrides: dict) -> None:
    with pytest.raises(InvalidArgumentError) as refused:
        checked_overrides(dict(CONFIG), json.dumps(overrides))
    assert next(iter(overrides)) in str(refused.value)


def test_context_keys_and_unchanged_values_pass() -> None:
    overrides = {
        "max_position_embeddings": 4096,
        "rope_scaling": {"type": "linear", "factor": 2.0},
        "hidden_size": 64,
    }
    assert checked_overrides(dict(CONFIG), json.dumps(overrides)) == overrides
    assert checked_overrides(dict(CONFIG), "") == {}


@pytest.mark.parametrize("text", ["{", "[1]"])
def test_malformed_overrides_are_invalid(text: str) -> None:
    with pytest.raises(InvalidArgumentError):
        checked_overrides(dict(CONFIG), text)

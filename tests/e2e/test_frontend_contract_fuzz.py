"""Property-based fuzz of the frontend's contract: over 2,000 generated requests (random field values,
oneof choices, out-of-range numbers, huge repeated fields and maps) against a real frontend with a real
scheduler and worker behind it. Every call ends with a gRPC status that is not a crash, no service
logs a traceback, and afterwards a normal request gives the same greedy tokens as before and every KV
block is free."""

from __future__ import annotations

from collections import Counter

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from infermesh.v1 import frontend_pb2

from tests.contract_fuzz import build, messages
from tests.e2e.harness import frontend_stub, generate_request, start_cluster, wait_all_blocks_free

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# Short: a call that would generate for long ends DEADLINE_EXCEEDED, which is an answer too.
_DEADLINE_S = 3.0
_MAX_MODEL_LEN = 1024  # the served test model's max_position_embeddings
# Tokens to generate: a few when valid (the fuzz is about the contract, not about generating), plus
# the edges and out-of-range values the frontend must refuse before any work.
_MAX_TOKENS = st.one_of(
    st.integers(1, 4),
    st.sampled_from([0, _MAX_MODEL_LEN, _MAX_MODEL_LEN + 1, 2**31 - 1, 2**32 - 1]),
)
# Each sampling field is valid half of the time it is set, so that many requests get past validation
# into tokenizing, scheduling, sampling and detokenizing; the rest are the generic (mostly invalid) values.
_VALID = {
    "temperature": st.floats(0, 2),
    "top_p": st.floats(0.01, 1),
    "top_k": st.integers(0, 600),
    "min_p": st.floats(0, 1),
    "presence_penalty": st.floats(-2, 2),
    "frequency_penalty": st.floats(-2, 2),
    "repetition_penalty": st.floats(0.01, 2),
    "n": st.integers(1, 4),
    "min_tokens": st.integers(0, 4),
    "logprobs": st.integers(0, 20),
    "top_logprobs": st.integers(0, 20),
    "stop_token_ids": st.lists(st.integers(0, 600), max_size=4),
    "stop": st.lists(st.text(min_size=1, max_size=8), max_size=4),
    "logit_bias": st.dictionaries(st.integers(0, 511), st.floats(-100, 100), max_size=4),
}
_IDS = st.lists(st.integers(0, 511), min_size=1, max_size=16)  # the test vocabulary has 512 ids
_OVERRIDES = {
    "infermesh.v1.ClientSamplingParams.max_tokens": _MAX_TOKENS,
    **{f"+infermesh.v1.ClientSamplingParams.{name}": valid for name, valid in _VALID.items()},
    "+infermesh.v1.GenerateInput.text": st.text(min_size=1, max_size=40),
    "+infermesh.v1.TokenIds.ids": _IDS,
    "+infermesh.v1.GenerateInput.cache_salt": st.text(max_size=8),
    "+infermesh.v1.DetokenizeRequest.token_ids": _IDS,
}

# Generated calls per RPC; over 2,000 in all. GetModelInfo's request has no fields: one shape.
_CALLS = {
    "Generate": 800,
    "GenerateStream": 400,
    "Tokenize": 400,
    "Detokenize": 400,
    "GetModelInfo": 1,
}
_REQUESTS = {
    "Generate": frontend_pb2.GenerateRequest,
    "GenerateStream": frontend_pb2.GenerateStreamRequest,
    "Tokenize": frontend_pb2.TokenizeRequest,
    "Detokenize": frontend_pb2.DetokenizeRequest,
    "GetModelInfo": frontend_pb2.FrontendServiceGetModelInfoRequest,
}
# Statuses that only a crash or an unmapped exception produces.
_CRASH = (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)


@pytest.fixture(scope="module")
def fuzzed_cluster(llama_model, tmp_path_factory):
    cluster = start_cluster(
        llama_model,
        tmp_path_factory.mktemp("fuzz-logs"),
        scheduler_args=["--dtype", "fp32", "--total-blocks", "512", "--max-batch-size", "64"],
        # A request without max_tokens generates this many; the vLLM default (up to the context
        # limit) would spend the fuzz's time generating.
        frontend_args=["--default-max-tokens", "4"],
    )
    yield cluster
    cluster.stop()


def _call(fn, request) -> grpc.StatusCode:
    """Makes the call and returns its status; a stream is read a little, then cancelled."""
    try:
        result = fn(request, timeout=_DEADLINE_S)
        if hasattr(result, "cancel"):
            for index, _ in enumerate(result):
                if index >= 2:
                    break
            result.cancel()
    except grpc.RpcError as err:
        if err.code() is grpc.StatusCode.CANCELLED:
            return grpc.StatusCode.OK  # our own cancel
        assert err.code() not in _CRASH, (
            f"{type(request).__name__} {request}\n-> {err.code()}: {err.details()}"
        )
        return err.code()
    return grpc.StatusCode.OK


def _fuzz(stub, rpc: str, statuses: Counter) -> int:
    """Sends generated requests to `rpc`; returns how many were sent."""
    sent = [0]
    request_cls = _REQUESTS[rpc]

    @settings(max_examples=_CALLS[rpc], deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(messages(request_cls.DESCRIPTOR, overrides=_OVERRIDES))
    def one(values):
        try:
            request = build(request_cls, values)
        except (ValueError, TypeError, OverflowError):
            return  # protobuf itself refuses the value: nothing reaches the server
        sent[0] += 1
        statuses[(rpc, _call(getattr(stub, rpc), request).name)] += 1

    one()
    return sent[0]


def _greedy(stub) -> list[int]:
    request = generate_request(text="The fuzz is over", max_tokens=8, temperature=0, ignore_eos=True)
    response = stub.Generate(frontend_pb2.GenerateRequest(input=request), timeout=60)
    return list(response.completions[0].token_ids)


def _tracebacks(cluster) -> list[str]:
    found = []
    for log in sorted(cluster.spec.log_dir.glob("*.log")):
        text = log.read_text(errors="replace")
        if "Traceback" in text:
            start = text.index("Traceback")
            found.append(f"{log.name}:\n{text[start : start + 3000]}")
    return found


def test_frontend_answers_every_generated_request_with_a_status(fuzzed_cluster, capsys):
    stub = frontend_stub(fuzzed_cluster.frontend_address)
    before = _greedy(stub)
    statuses: Counter = Counter()
    sent = {rpc: _fuzz(stub, rpc, statuses) for rpc in _CALLS}
    with capsys.disabled():
        print(f"\nfrontend contract fuzz: {sum(sent.values())} calls {sent}; statuses {dict(statuses)}")
    for rpc, calls in _CALLS.items():
        assert sent[rpc] >= calls * 0.9, f"only {sent[rpc]} generated {rpc} requests were valid protobuf"
    assert sum(sent.values()) >= 2000

    assert not _tracebacks(fuzzed_cluster), "\n\n".join(_tracebacks(fuzzed_cluster))
    # The services are unharmed: the same greedy answer as before the storm, and no block held.
    assert _greedy(stub) == before
    wait_all_blocks_free(fuzzed_cluster.scheduler_address, timeout_s=60)

"""A real scheduler process with a fake worker: streams, finish reasons, concurrency, cancellation."""

from __future__ import annotations

import threading

import grpc
import pytest
from infermesh.v1 import common_pb2, scheduler_pb2

from tests.scheduler_service.conftest import BLOCK_SIZE, TOTAL_BLOCKS
from tests.scheduler_service.service_harness import (
    EOS_ID,
    MAX_POSITIONS,
    VOCAB_SIZE,
    expected_tokens,
    load,
    submit_request,
)

pytestmark = pytest.mark.e2e


def collect(stub, request, timeout=20):
    """Every message of one Submit stream."""
    return list(stub.Submit(request, timeout=timeout))


def tokens_by_index(responses):
    out: dict[int, list[int]] = {}
    for r in responses:
        out.setdefault(r.index, []).extend(r.token_ids)
    return out


def test_stream_finishes_with_length(stub):
    prompt = [10, 11, 12, 13, 14]
    responses = collect(stub, submit_request("len-1", prompt, 7))
    assert tokens_by_index(responses) == {0: expected_tokens(prompt, 7)}
    assert [r.finish_reason for r in responses[:-1]] == [common_pb2.FINISH_REASON_UNSPECIFIED] * (
        len(responses) - 1
    )
    last = responses[-1]
    assert last.finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (5, 7)
    assert all(not r.HasField("usage") for r in responses[:-1])


def test_stream_stops_on_eos_and_includes_it(stub):
    prompt = [VOCAB_SIZE - 4]  # counts up 125, 126, 127, 0, 1, 2=EOS
    responses = collect(stub, submit_request("eos-1", prompt, 50))
    tokens = tokens_by_index(responses)[0]
    assert tokens == [VOCAB_SIZE - 3, VOCAB_SIZE - 2, VOCAB_SIZE - 1, 0, 1, EOS_ID]
    assert responses[-1].finish_reason == common_pb2.FINISH_REASON_STOP
    assert responses[-1].usage.completion_tokens == 6


def test_ignore_eos_and_stop_token_ids(stub):
    prompt = [VOCAB_SIZE - 2]
    ignored = tokens_by_index(collect(stub, submit_request("ign-1", prompt, 6, ignore_eos=True)))[0]
    assert ignored == expected_tokens(prompt, 6)  # runs through EOS (2) to max_tokens
    stopped = collect(stub, submit_request("stop-1", [40], 20, stop_token_ids=[43]))
    assert tokens_by_index(stopped)[0] == [41, 42, 43]
    assert stopped[-1].finish_reason == common_pb2.FINISH_REASON_STOP


def test_n_completions_and_logprobs(stub):
    prompt = list(range(20, 30))  # 10 tokens: spans blocks, last block shared copy-on-write
    responses = collect(stub, submit_request("n-3", prompt, 4, n=3, logprobs=1))
    assert tokens_by_index(responses) == {i: expected_tokens(prompt, 4) for i in range(3)}
    finished = [r.index for r in responses if r.finish_reason == common_pb2.FINISH_REASON_LENGTH]
    assert sorted(finished) == [0, 1, 2]
    assert all(len(r.logprobs) == len(r.token_ids) for r in responses)
    assert responses[-1].usage.completion_tokens == 12


def test_64_concurrent_streams(stub):
    results: dict[str, list] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        prompt = [(i * 3) % 100 + 3 + k for k in range(1 + i % 9)]
        try:
            results[f"c-{i}"] = (
                prompt,
                3 + i % 13,
                collect(stub, submit_request(f"c-{i}", prompt, 3 + i % 13)),
            )
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[0]
    assert len(results) == 64
    for prompt, max_tokens, responses in results.values():
        tokens = tokens_by_index(responses)[0]
        # Counting up may cross EOS (2) before max_tokens: then the stream ends with STOP there.
        want = expected_tokens(prompt, max_tokens)
        if EOS_ID in want:
            want = want[: want.index(EOS_ID) + 1]
        assert tokens == want
        assert responses[-1].usage.completion_tokens == len(want)
    snapshot = load(stub)
    assert snapshot.total_blocks == TOTAL_BLOCKS


def test_cancelled_stream_frees_its_blocks(stub):
    prompt = list(range(30, 30 + 3 * BLOCK_SIZE))
    call = stub.Submit(
        submit_request("cancel-1", prompt, MAX_POSITIONS - len(prompt), ignore_eos=True), timeout=30
    )
    first = next(call)
    assert first.token_ids
    assert load(stub).free_blocks < TOTAL_BLOCKS  # it holds blocks while it runs
    call.cancel()
    # The stub fixture's teardown waits until every block is free again.


def test_abort_ends_stream_with_abort_reason(stub):
    call = stub.Submit(submit_request("abort-1", [5, 6, 7], 200, ignore_eos=True), timeout=30)
    next(call)
    assert stub.Abort(scheduler_pb2.AbortRequest(request_id="abort-1"), timeout=5).found
    rest = list(call)
    assert rest[-1].finish_reason == common_pb2.FINISH_REASON_ABORT
    assert rest[-1].HasField("usage")
    assert not stub.Abort(scheduler_pb2.AbortRequest(request_id="abort-1"), timeout=5).found


def test_duplicate_live_request_id_is_already_exists(stub):
    call = stub.Submit(submit_request("dup-1", [5], 200, ignore_eos=True), timeout=30)
    next(call)
    with pytest.raises(grpc.RpcError) as err:
        collect(stub, submit_request("dup-1", [5], 3))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "dup-1" in err.value.details()
    call.cancel()


def test_model_info(stub):
    info = stub.GetModelInfo(scheduler_pb2.GetModelInfoRequest(), timeout=5).model
    assert info.model_name.startswith("tiny-llama")
    assert info.architecture == "LlamaForCausalLM"
    assert (info.vocab_size, info.max_model_len, list(info.eos_token_ids)) == (
        VOCAB_SIZE,
        MAX_POSITIONS,
        [EOS_ID],
    )
    assert (info.block_size, info.total_blocks, info.tp_size, info.pp_size, info.dtype) == (
        BLOCK_SIZE,
        TOTAL_BLOCKS,
        1,
        1,
        "fp32",
    )


def test_cancels_and_aborts_racing_steps_leak_nothing(stub):
    """A quarter of the streams are cancelled and a quarter aborted while steps are in flight."""
    calls = {
        i: stub.Submit(submit_request(f"race-{i}", [3 + i, 4 + i], 60, ignore_eos=True), timeout=30)
        for i in range(40)
    }
    for i, call in calls.items():
        want = expected_tokens([3 + i, 4 + i], 60)
        got = list(next(call).token_ids)
        if i % 4 == 0:
            call.cancel()
            continue
        if i % 4 == 1:
            found = stub.Abort(scheduler_pb2.AbortRequest(request_id=f"race-{i}"), timeout=5).found
            rest = list(call)
            got += [t for r in rest for t in r.token_ids]
            last = rest[-1] if rest else None
            if found:  # ended early: what came is a prefix of the full answer
                assert last is not None and last.finish_reason == common_pb2.FINISH_REASON_ABORT
                assert got == want[: len(got)]
                continue
        else:
            got += [t for r in call for t in r.token_ids]
        assert got == want

"""Generation's failover decisions as typed outcomes, and a fresh SubmitRequest per attempt."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
import pytest
from infermesh.v1 import common_pb2, scheduler_pb2
from infermesh_frontend.attempt_outcome import Fail, Failover
from infermesh_frontend.generation import Generation, PreparedRequest


class CharDetokenizer:
    """Token id t is the character chr(t): enough to drive CompletionOutput."""

    def add_tokens(self, token_ids: Sequence[int]) -> str:
        return "".join(chr(t) for t in token_ids)

    def finish(self) -> str:
        return ""


def generation(n: int = 1, max_tokens: int = 8) -> Generation:
    submit = scheduler_pb2.SubmitRequest(
        request_id="r1",
        prompt_token_ids=[1, 2, 3],
        sampling=common_pb2.SamplingParams(temperature=0.0, top_p=1.0, max_tokens=max_tokens, n=n),
    )
    prepared = PreparedRequest(submit, [])
    return Generation(pool=None, request=prepared, new_detokenizer=lambda ids: CharDetokenizer())  # type: ignore[arg-type]


def stream_tokens(g: Generation, tokens: list[int]) -> None:
    for token in tokens:
        g.outputs[0].add([token], [], common_pb2.FINISH_REASON_UNSPECIFIED)


def test_each_attempt_gets_a_fresh_submit_that_resumes_from_the_streamed_tokens():
    g = generation()
    first = g._submit_request()
    assert list(first.resumed_output_token_ids) == []
    stream_tokens(g, [65, 66, 67])
    second = g._submit_request()
    assert list(second.resumed_output_token_ids) == [65, 66, 67]
    assert second is not first and list(first.resumed_output_token_ids) == []
    assert list(g._request.submit.resumed_output_token_ids) == []  # the prepared one is never edited
    assert (second.request_id, list(second.prompt_token_ids)) == ("r1", [1, 2, 3])


def test_a_replica_lost_mid_stream_fails_over_when_the_request_can_continue():
    g = generation()
    stream_tokens(g, [65, 66])
    code = grpc.StatusCode.UNAVAILABLE
    assert g._failover_or_fail(code, "gone", "unavailable", received=True, is_last_replica=False) == Failover(
        "unavailable"
    )
    assert g._failover_or_fail(code, "quiet", "stalled", received=False, is_last_replica=False) == Failover(
        "stalled"
    )


@pytest.mark.parametrize(
    ("n", "streamed", "is_last", "words"),
    [
        (1, 2, True, "no other scheduler replica is left"),
        (1, 8, False, "no other scheduler replica is left"),  # nothing left to generate elsewhere
        (2, 0, False, "n > 1 cannot be resumed"),
    ],
)
def test_a_request_that_cannot_continue_fails_with_the_reason(n, streamed, is_last, words):
    g = generation(n=n)
    stream_tokens(g, list(range(65, 65 + streamed)))
    outcome = g._failover_or_fail(grpc.StatusCode.UNAVAILABLE, "gone", "unavailable", True, is_last)
    assert isinstance(outcome, Fail)
    assert outcome.error.code == grpc.StatusCode.UNAVAILABLE and words in outcome.error.message
    assert outcome.error.message.startswith("gone; ")

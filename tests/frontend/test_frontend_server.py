"""The frontend server against a fake scheduler (a real gRPC SchedulerService in this process).

Covers Generate, GenerateStream, stop strings ending a request by Abort, a cancelled stream
aborting its request, INVALID_ARGUMENT cases, scheduler errors passed through, UNAVAILABLE when
no scheduler answers, and the console script as a separate process.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from infermesh.v1 import common_pb2, frontend_pb2, frontend_pb2_grpc
from infermesh_cli.demo_tokenizer import build_demo_tokenizer, write_tokenizer_files
from infermesh_frontend.server import FrontendServer
from infermesh_frontend.tokenizer import FrontendTokenizer
from infermesh_shared.config import config_from_options

from tests.frontend.fake_scheduler import (
    FakeScheduler,
    LoopThread,
    loop_thread,
    serving_fake_scheduler,
)

VOCAB_SIZE = 512
MAX_MODEL_LEN = 64
OUTPUT_TEXT = "Hello world! The answer is 42. STOP and then 你好 🙂 more text"
RPC_TIMEOUT_S = 10.0


def _wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def _dead_address() -> str:
    # A port that was free a moment ago and that nobody listens on.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("frontend-model")
    write_tokenizer_files(out, build_demo_tokenizer(VOCAB_SIZE))
    return out


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> FrontendTokenizer:
    return FrontendTokenizer.from_model_path(model_dir)


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    with loop_thread() as thread:
        yield thread


@pytest.fixture(scope="module")
def fake_server(loop: LoopThread) -> Iterator[tuple[FakeScheduler, str]]:
    with serving_fake_scheduler(loop, VOCAB_SIZE, MAX_MODEL_LEN) as served:
        yield served


@pytest.fixture
def fake(fake_server: tuple[FakeScheduler, str], tokenizer: FrontendTokenizer) -> FakeScheduler:
    scheduler, _ = fake_server
    scheduler.tokens = tokenizer.encode(OUTPUT_TEXT, add_special_tokens=False)
    scheduler.tokens_by_index = {}
    scheduler.delay_s = 0.0
    scheduler.endless = False
    scheduler.error = None
    scheduler.finish_reason = common_pb2.FINISH_REASON_LENGTH
    scheduler.submits.clear()
    scheduler.time_remaining.clear()
    scheduler.aborts.clear()
    scheduler.cancelled.clear()
    return scheduler


def _start_frontend(
    loop: LoopThread, model_dir: Path, addresses: list[str], metrics_port: int = 0
) -> tuple[FrontendServer, str]:
    async def start() -> FrontendServer:
        settings = config_from_options(
            "frontend",
            port=0,
            model_path=str(model_dir),
            scheduler_addresses=addresses,
            default_max_tokens=16,
            max_stop_strings=4,
            health_check_interval_ms=100,
            metrics_port=metrics_port,
        )
        server = FrontendServer(settings)
        await server.start()
        return server

    server = loop.run(start())
    return server, f"127.0.0.1:{server.port}"


@pytest.fixture(scope="module")
def frontend_address(
    loop: LoopThread, model_dir: Path, fake_server: tuple[FakeScheduler, str]
) -> Iterator[str]:
    server, address = _start_frontend(loop, model_dir, [fake_server[1]])
    yield address
    loop.run(server.stop(0))


@pytest.fixture(scope="module")
def stub(frontend_address: str) -> Iterator[frontend_pb2_grpc.FrontendServiceStub]:
    channel = grpc.insecure_channel(frontend_address)
    yield frontend_pb2_grpc.FrontendServiceStub(channel)
    channel.close()


def _input(text: str = "Hi", **sampling) -> frontend_pb2.GenerateInput:
    return frontend_pb2.GenerateInput(text=text, sampling=frontend_pb2.ClientSamplingParams(**sampling))


def test_generate_returns_text_tokens_and_usage(
    stub, fake: FakeScheduler, tokenizer: FrontendTokenizer
) -> None:
    response = stub.Generate(frontend_pb2.GenerateRequest(input=_input("Hi")), timeout=RPC_TIMEOUT_S)
    [completion] = response.completions
    assert completion.text == OUTPUT_TEXT
    assert list(completion.token_ids) == fake.tokens
    assert completion.finish_reason == common_pb2.FINISH_REASON_LENGTH
    [submit] = fake.submits
    assert response.request_id == submit.request_id and len(response.request_id) == 32
    # The prompt went out tokenized with BOS, and every sampling default was filled in.
    assert list(submit.prompt_token_ids) == tokenizer.encode("Hi")
    assert submit.prompt_token_ids[0] == tokenizer.bos_token_id
    sampling = submit.sampling
    assert (sampling.temperature, sampling.top_p, sampling.top_k, sampling.max_tokens, sampling.n) == (
        1,
        1,
        0,
        16,
        1,
    )
    assert response.usage.prompt_tokens == len(submit.prompt_token_ids)
    assert response.usage.completion_tokens == len(fake.tokens)
    assert fake.aborts == []


def test_generate_stream_sends_deltas_per_completion(stub, fake: FakeScheduler) -> None:
    request = frontend_pb2.GenerateStreamRequest(input=_input("Hi", n=2, logprobs=1))
    messages = list(stub.GenerateStream(request, timeout=RPC_TIMEOUT_S))
    for index in (0, 1):
        mine = [m for m in messages if m.index == index]
        assert "".join(m.text for m in mine) == OUTPUT_TEXT
        assert [t for m in mine for t in m.token_ids] == fake.tokens
        assert len([lp for m in mine for lp in m.logprobs]) == len(fake.tokens)
        assert [m.finish_reason for m in mine][-1] == common_pb2.FINISH_REASON_LENGTH
        assert all(m.finish_reason == common_pb2.FINISH_REASON_UNSPECIFIED for m in mine[:-1])
        # Deltas come as tokens arrive, never half a character (the emoji spans several tokens).
        assert len(mine) > 5 and all("\ufffd" not in m.text for m in mine)
    assert messages[-1].HasField("usage") and messages[-1].usage.completion_tokens == 2 * len(fake.tokens)
    assert not any(m.HasField("usage") for m in messages[:-1])


@pytest.mark.parametrize("streaming", [False, True])
def test_stop_string_ends_output_before_match_and_aborts(stub, fake: FakeScheduler, streaming: bool) -> None:
    fake.endless = True
    fake.delay_s = 0.005
    text_input = _input("Hi", stop=["STOP", "never"], max_tokens=40)
    if streaming:
        messages = list(stub.GenerateStream(frontend_pb2.GenerateStreamRequest(input=text_input), timeout=10))
        text = "".join(m.text for m in messages)
        finish_reason, matched_stop = messages[-1].finish_reason, messages[-1].matched_stop
        request_id = messages[-1].request_id
        assert messages[-1].HasField("usage")
    else:
        response = stub.Generate(frontend_pb2.GenerateRequest(input=text_input), timeout=RPC_TIMEOUT_S)
        [completion] = response.completions
        text, finish_reason, matched_stop = completion.text, completion.finish_reason, completion.matched_stop
        request_id = response.request_id
    assert text == OUTPUT_TEXT[: OUTPUT_TEXT.index("STOP")]
    assert finish_reason == common_pb2.FINISH_REASON_STOP and matched_stop == "STOP"
    assert _wait_for(lambda: request_id in fake.aborts), "the frontend did not Abort after the stop string"


def test_stop_string_in_one_of_two_completions(
    stub, fake: FakeScheduler, tokenizer: FrontendTokenizer
) -> None:
    # Completion 1 never says STOP and ends first (LENGTH); completion 0 then hits STOP while the
    # scheduler would still generate for it, so the frontend aborts the request.
    fake.tokens_by_index = {1: tokenizer.encode("no stop here, just text", add_special_tokens=False)}
    request_input = _input("Hi", n=2, stop=["STOP"], max_tokens=40)
    response = stub.Generate(frontend_pb2.GenerateRequest(input=request_input), timeout=RPC_TIMEOUT_S)
    first, second = response.completions
    assert (first.text, first.finish_reason, first.matched_stop) == (
        OUTPUT_TEXT[: OUTPUT_TEXT.index("STOP")],
        common_pb2.FINISH_REASON_STOP,
        "STOP",
    )
    assert (second.text, second.finish_reason, second.matched_stop) == (
        "no stop here, just text",
        common_pb2.FINISH_REASON_LENGTH,
        "",
    )
    # Tokens after the stop are dropped; usage counts what the client got.
    assert len(first.token_ids) < len(fake.tokens)
    assert list(second.token_ids) == fake.tokens_by_index[1]
    assert response.usage.completion_tokens == len(first.token_ids) + len(second.token_ids)
    assert _wait_for(lambda: response.request_id in fake.aborts)


def test_cancelled_stream_aborts_the_request(stub, fake: FakeScheduler) -> None:
    fake.endless = True
    fake.delay_s = 0.01
    call = stub.GenerateStream(
        frontend_pb2.GenerateStreamRequest(input=_input("Hi", max_tokens=40)), timeout=10
    )
    first = [next(call) for _ in range(3)]
    call.cancel()
    request_id = first[0].request_id
    assert _wait_for(lambda: request_id in fake.aborts), "a cancelled client stream did not Abort the request"
    assert _wait_for(lambda: request_id in fake.cancelled), "the Submit stream was left running"


@pytest.mark.parametrize(
    ("request_input", "message"),
    [
        (frontend_pb2.GenerateInput(text=""), "the prompt is empty"),
        (frontend_pb2.GenerateInput(), "the prompt is empty"),
        (frontend_pb2.GenerateInput(token_ids=frontend_pb2.TokenIds(ids=[])), "the prompt is empty"),
        (
            _input("Hi", max_tokens=100),
            r"prompt \(3 tokens\) \+ max_tokens \(100\) = 103 tokens exceeds the model's max_model_len of 64",
        ),
        (_input("Hi", temperature=-1), "temperature must be >= 0"),
        (_input("Hi", temperature=float("nan")), "temperature must be a finite number"),
        (_input("Hi", top_p=0), r"top_p must be in \(0, 1\]"),
        (_input("Hi", top_p=1.5), r"top_p must be in \(0, 1\]"),
        (_input("Hi", top_k=-1), "top_k must be >= 0"),
        (_input("Hi", min_p=1.5), r"min_p must be in \[0, 1\]"),
        (_input("Hi", min_p=-0.1), r"min_p must be in \[0, 1\]"),
        (_input("Hi", max_tokens=0), "max_tokens must be >= 1, got 0"),
        (_input("Hi", stop=["a", ""]), "stop string #1 is empty"),
        (_input("Hi", stop=["a", "b", "c", "d", "e"]), "too many stop strings: 5 given, at most 4"),
        (_input("Hi", stop=[""]), "stop string #0 is empty"),
        (_input("Hi", n=0), "must be >= 1"),
    ],
)
def test_invalid_requests_are_invalid_argument(
    stub, fake: FakeScheduler, request_input, message: str
) -> None:
    for call in (
        lambda: stub.Generate(frontend_pb2.GenerateRequest(input=request_input), timeout=RPC_TIMEOUT_S),
        lambda: list(
            stub.GenerateStream(frontend_pb2.GenerateStreamRequest(input=request_input), timeout=10)
        ),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert re.search(message, caught.value.details() or ""), caught.value.details()
    assert fake.submits == []


def test_scheduler_status_passes_through_unchanged(stub, fake: FakeScheduler) -> None:
    fake.error = (grpc.StatusCode.INVALID_ARGUMENT, "prompt_token_ids[0] = 900 is not below vocab_size 512")
    request_input = frontend_pb2.GenerateInput(token_ids=frontend_pb2.TokenIds(ids=[900]))
    with pytest.raises(grpc.RpcError) as caught:
        stub.Generate(frontend_pb2.GenerateRequest(input=request_input), timeout=RPC_TIMEOUT_S)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "prompt_token_ids[0] = 900 is not below vocab_size 512"
    fake.error = (grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full: 8 of 8 waiting")
    with pytest.raises(grpc.RpcError) as caught:
        list(
            stub.GenerateStream(frontend_pb2.GenerateStreamRequest(input=_input("Hi")), timeout=RPC_TIMEOUT_S)
        )
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert caught.value.details() == "queue full: 8 of 8 waiting"
    # A scheduler that answers UNAVAILABLE itself is reachable: its own message goes through.
    fake.error = (grpc.StatusCode.UNAVAILABLE, "worker group incomplete: 1 of 2 workers registered")
    with pytest.raises(grpc.RpcError) as caught:
        stub.Generate(frontend_pb2.GenerateRequest(input=_input("Hi")), timeout=RPC_TIMEOUT_S)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert caught.value.details() == "worker group incomplete: 1 of 2 workers registered"


def test_queue_timeout_and_non_blocking_reach_the_scheduler(stub, fake: FakeScheduler) -> None:
    request_input = _input("Hi")
    request_input.queue_timeout_ms = 250
    stub.Generate(frontend_pb2.GenerateRequest(input=request_input), timeout=RPC_TIMEOUT_S)
    assert (fake.submits[-1].queue_timeout_ms, fake.submits[-1].non_blocking) == (250, False)
    request_input.non_blocking = True
    stub.Generate(frontend_pb2.GenerateRequest(input=request_input), timeout=RPC_TIMEOUT_S)
    assert fake.submits[-1].non_blocking


def test_request_timeout_is_deadline_exceeded_and_aborts(stub, fake: FakeScheduler) -> None:
    fake.endless = True
    fake.delay_s = 0.02
    request_input = _input("Hi", max_tokens=40)
    request_input.timeout_ms = 100
    with pytest.raises(grpc.RpcError) as caught:
        stub.Generate(frontend_pb2.GenerateRequest(input=request_input), timeout=RPC_TIMEOUT_S)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "did not finish within its timeout of 100 ms" in caught.value.details()
    [submit] = fake.submits
    # The deadline travels as the call's remaining time, not as a wall-clock instant.
    assert submit.deadline_unix_ms == 0
    [remaining] = fake.time_remaining
    # ~0.1 s (the header is rounded to a few digits): the request's own timeout, no grace added.
    assert remaining is not None and 0 < remaining <= 0.15
    assert _wait_for(lambda: submit.request_id in fake.aborts)


def test_tokenize_detokenize_and_model_info(stub, fake: FakeScheduler, tokenizer: FrontendTokenizer) -> None:
    ids = stub.Tokenize(frontend_pb2.TokenizeRequest(text="café 🙂", add_special_tokens=True)).token_ids
    assert list(ids) == tokenizer.encode("café 🙂")
    assert (
        stub.Detokenize(frontend_pb2.DetokenizeRequest(token_ids=ids, skip_special_tokens=True)).text
        == "café 🙂"
    )
    assert stub.Detokenize(frontend_pb2.DetokenizeRequest(token_ids=ids)).text == "<s>café 🙂"
    with pytest.raises(grpc.RpcError) as caught:
        stub.Detokenize(frontend_pb2.DetokenizeRequest(token_ids=[5, 100000]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    model = stub.GetModelInfo(frontend_pb2.FrontendServiceGetModelInfoRequest()).model
    assert (model.model_name, model.max_model_len, model.vocab_size) == (
        "fake-model",
        MAX_MODEL_LEN,
        VOCAB_SIZE,
    )


def test_health_is_serving_once_the_scheduler_answers(frontend_address: str, fake: FakeScheduler) -> None:
    with grpc.insecure_channel(frontend_address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert _wait_for(
            lambda: (
                health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
            )
        )


def test_unavailable_when_no_scheduler_answers(loop: LoopThread, model_dir: Path) -> None:
    dead = _dead_address()
    server, address = _start_frontend(loop, model_dir, [dead])
    try:
        with grpc.insecure_channel(address) as channel:
            stub = frontend_pb2_grpc.FrontendServiceStub(channel)
            for call in (
                lambda: stub.Generate(
                    frontend_pb2.GenerateRequest(input=_input("Hi")), timeout=RPC_TIMEOUT_S
                ),
                lambda: stub.GetModelInfo(
                    frontend_pb2.FrontendServiceGetModelInfoRequest(), timeout=RPC_TIMEOUT_S
                ),
            ):
                with pytest.raises(grpc.RpcError) as caught:
                    call()
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
                assert f"no scheduler replica is reachable at {dead}" in caught.value.details()
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest()).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        loop.run(server.stop(0))


def test_round_robin_skips_a_dead_replica(loop: LoopThread, model_dir: Path, fake_server, fake) -> None:
    dead = _dead_address()
    server, address = _start_frontend(loop, model_dir, [dead, fake_server[1]])
    try:
        with grpc.insecure_channel(address) as channel:
            stub = frontend_pb2_grpc.FrontendServiceStub(channel)
            for _ in range(3):
                response = stub.Generate(
                    frontend_pb2.GenerateRequest(input=_input("Hi")), timeout=RPC_TIMEOUT_S
                )
                assert response.completions[0].text == OUTPUT_TEXT
        assert len(fake.submits) == 3
    finally:
        loop.run(server.stop(0))


def test_console_script_serves_in_its_own_process(model_dir: Path, fake_server, fake) -> None:
    command = [
        sys.executable, "-m", "infermesh_frontend",
        "--model-path", str(model_dir),
        "--scheduler-addresses", fake_server[1],
        "--port", "0",
        "--log-level", "warn",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("frontend listening on 127.0.0.1:"), (line, process.poll())
        port = int(line.strip().rsplit(":", 1)[1])
        assert port > 0
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = frontend_pb2_grpc.FrontendServiceStub(channel)
            response = stub.Generate(
                frontend_pb2.GenerateRequest(input=_input("Hi", stop=["answer"])), timeout=RPC_TIMEOUT_S
            )
        assert response.completions[0].text == "Hello world! The "
        assert response.completions[0].matched_stop == "answer"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert process.returncode == 0, process.stderr.read()


def test_console_script_refuses_options_it_cannot_honour(model_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "infermesh_frontend", "--model-path", str(model_dir),
         "--scheduler-addresses", "127.0.0.1:1", "--port", "8080", "--http-port", "8080"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "Error: Configuration validation failed" in result.stderr
    assert "give the HTTP API a port of its own" in result.stderr


def _run_generate_command(argv: list[str]) -> int:
    import argparse

    from infermesh_cli.generate_command import add_generate_subcommand

    parser = argparse.ArgumentParser(prog="infermesh")
    add_generate_subcommand(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


def test_generate_command_prints_text(frontend_address: str, fake: FakeScheduler, capsys) -> None:
    argv = [
        "generate",
        "--address",
        frontend_address,
        "--max-tokens",
        "40",
        "--temperature",
        "0",
        "--seed",
        "3",
    ]
    assert _run_generate_command([*argv, "--stop", "STOP", "Hi"]) == 0
    assert capsys.readouterr().out == OUTPUT_TEXT[: OUTPUT_TEXT.index("STOP")] + "\n"
    assert fake.submits[-1].sampling.temperature == 0 and fake.submits[-1].sampling.seed == 3
    assert _run_generate_command([*argv, "--stream", "Hi"]) == 0
    assert capsys.readouterr().out == OUTPUT_TEXT + "\n"


def test_generate_command_reports_errors(frontend_address: str, fake: FakeScheduler, capsys) -> None:
    assert (
        _run_generate_command(["generate", "--address", frontend_address, "--max-tokens", "500", "Hi"]) == 1
    )
    assert "Error: INVALID_ARGUMENT: prompt (3 tokens) + max_tokens (500)" in capsys.readouterr().err


def test_metrics_endpoint_counts_requests(loop: LoopThread, model_dir: Path, fake_server, fake) -> None:
    import urllib.request

    metrics_port = int(_dead_address().rsplit(":", 1)[1])
    server, address = _start_frontend(loop, model_dir, [fake_server[1]], metrics_port=metrics_port)
    try:
        with grpc.insecure_channel(address) as channel:
            stub = frontend_pb2_grpc.FrontendServiceStub(channel)
            stub.Generate(frontend_pb2.GenerateRequest(input=_input("Hi")), timeout=RPC_TIMEOUT_S)
            with pytest.raises(grpc.RpcError):
                stub.Generate(frontend_pb2.GenerateRequest(input=_input("")), timeout=RPC_TIMEOUT_S)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as page:
            text = page.read().decode()
    finally:
        loop.run(server.stop(0))
    # Every series names the service and the model the scheduler reported.
    labels = 'model_name="fake-model",service="frontend"'
    assert f'infermesh_requests_total{{{labels},status="ok"}} 1.0' in text
    assert f'infermesh_requests_total{{{labels},status="invalid_argument"}} 1.0' in text
    assert f"infermesh_time_to_first_token_seconds_count{{{labels}}} 1.0" in text
    assert f"infermesh_generation_tokens_total{{{labels}}} {float(len(fake.tokens))}" in text

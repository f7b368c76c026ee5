"""The OpenAI HTTP API in front of a fake scheduler (in this process): status mapping of scheduler
errors, request refusals, n > 1 and logprobs shapes, chat streaming, and traceparent continuation."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx2
import openai
import pytest
from infermesh.v1 import common_pb2
from infermesh_cli.demo_tokenizer import build_demo_tokenizer, write_tokenizer_files
from infermesh_frontend.server import FrontendServer
from infermesh_frontend.tokenizer import FrontendTokenizer
from infermesh_shared.config import config_from_options
from infermesh_shared.telemetry import flush_tracing, init_tracing, shutdown_tracing
from infermesh_shared.telemetry import semconv as sc

from tests.free_port import free_port
from tests.frontend.fake_scheduler import (
    FakeScheduler,
    LoopThread,
    loop_thread,
    serving_fake_scheduler,
)
from tests.telemetry.otlp_collector import OtlpCollector

VOCAB_SIZE = 512
MAX_MODEL_LEN = 64
OUTPUT_TEXT = "Hello world! The answer is 42."
MODEL = "fake-model"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("http-fake-model")
    write_tokenizer_files(out, build_demo_tokenizer(VOCAB_SIZE))
    return out


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    with loop_thread() as thread:
        yield thread


@pytest.fixture(scope="module")
def fake_server(loop: LoopThread) -> Iterator[tuple[FakeScheduler, str]]:
    with serving_fake_scheduler(loop, VOCAB_SIZE, MAX_MODEL_LEN) as served:
        yield served


def _start_frontend(loop: LoopThread, model_dir: Path, addresses: list[str], **options) -> FrontendServer:
    async def start() -> FrontendServer:
        settings = config_from_options(
            "frontend",
            port=0,
            model_path=str(model_dir),
            scheduler_addresses=addresses,
            http_port=free_port(),
            default_max_tokens=16,
            health_check_interval_ms=100,
            **options,
        )
        server = FrontendServer(settings)
        await server.start()
        return server

    return loop.run(start())


@pytest.fixture(scope="module")
def base_url(loop: LoopThread, model_dir: Path, fake_server: tuple[FakeScheduler, str]) -> Iterator[str]:
    server = _start_frontend(loop, model_dir, [fake_server[1]])
    assert server.http_server is not None
    yield f"http://127.0.0.1:{server.http_server.port}/v1"
    loop.run(server.stop(0))


@pytest.fixture
def fake(fake_server: tuple[FakeScheduler, str], model_dir: Path) -> FakeScheduler:
    scheduler, _ = fake_server
    tokenizer = FrontendTokenizer.from_model_path(model_dir)
    scheduler.tokens = tokenizer.encode(OUTPUT_TEXT, add_special_tokens=False)
    scheduler.tokens_by_index = {}
    scheduler.delay_s = 0.0
    scheduler.endless = False
    scheduler.error = None
    scheduler.finish_reason = common_pb2.FINISH_REASON_LENGTH
    scheduler.submits.clear()
    scheduler.aborts.clear()
    return scheduler


@pytest.fixture
def client(base_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=20) as client:
        yield client


def _post(url: str, body: object, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
        (grpc.StatusCode.UNAVAILABLE, 503),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
        (grpc.StatusCode.INVALID_ARGUMENT, 400),
    ],
)
def test_scheduler_status_becomes_http_status(base_url: str, fake: FakeScheduler, code, status: int) -> None:
    fake.error = (code, "the scheduler says no")
    for stream in (False, True):
        got, body = _post(f"{base_url}/completions", {"model": MODEL, "prompt": "Hi", "stream": stream})
        assert got == status
        assert body["error"]["message"] == "the scheduler says no"
        assert body["error"]["code"] == code.name.lower()


@pytest.mark.parametrize(
    ("code", "status"), [(grpc.StatusCode.RESOURCE_EXHAUSTED, 429), (grpc.StatusCode.UNAVAILABLE, 503)]
)
def test_429_and_503_carry_retry_after(base_url: str, fake: FakeScheduler, code, status: int) -> None:
    fake.error = (code, "the queue stayed full")
    for stream in (False, True):
        body = json.dumps({"model": MODEL, "prompt": "Hi", "stream": stream}).encode()
        request = urllib.request.Request(
            f"{base_url}/completions", data=body, headers={"Content-Type": "application/json"}
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=20)
        assert refused.value.code == status
        assert refused.value.headers["Retry-After"] == "1"


def test_queue_timeout_ms_from_body_or_header_reaches_the_scheduler(
    base_url: str, fake: FakeScheduler
) -> None:
    url = f"{base_url}/completions"
    request = {"model": MODEL, "prompt": "Hi", "max_tokens": 2}
    assert _post(url, {**request, "queue_timeout_ms": 250})[0] == 200
    assert fake.submits[-1].queue_timeout_ms == 250
    assert _post(url, request, {"x-queue-timeout-ms": "400"})[0] == 200
    assert fake.submits[-1].queue_timeout_ms == 400
    # The body field is the more specific: it wins over the header.
    assert _post(url, {**request, "queue_timeout_ms": 250}, {"x-queue-timeout-ms": "400"})[0] == 200
    assert fake.submits[-1].queue_timeout_ms == 250
    assert _post(url, request)[0] == 200
    assert fake.submits[-1].queue_timeout_ms == 0  # the scheduler's queue_timeout_ms applies
    submitted = len(fake.submits)
    for body, headers, param in [
        ({**request, "queue_timeout_ms": 0}, None, "queue_timeout_ms"),
        ({**request, "queue_timeout_ms": "soon"}, None, "queue_timeout_ms"),
        (request, {"x-queue-timeout-ms": "soon"}, "x-queue-timeout-ms"),
        (request, {"x-queue-timeout-ms": str(2**32)}, "x-queue-timeout-ms"),
    ]:
        status, answer = _post(url, body, headers)
        assert (status, answer["error"]["param"]) == (400, param), answer
    assert len(fake.submits) == submitted


def test_no_scheduler_is_503(loop: LoopThread, model_dir: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{probe.getsockname()[1]}"
    server = _start_frontend(loop, model_dir, [dead])
    try:
        assert server.http_server is not None
        url = f"http://127.0.0.1:{server.http_server.port}/v1/completions"
        status, body = _post(url, {"model": MODEL, "prompt": "Hi"})
        assert status == 503
        assert "no scheduler replica is reachable" in body["error"]["message"]
    finally:
        loop.run(server.stop(0))


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        # Refused by the scheduler's check_request (the fake runs it), which names the field.
        ("frequency_penalty", 3.0, "frequency_penalty must be in [-2, 2]"),
        ("logprobs", 21, "logprobs must be <= 20"),
        ("top_p", 0, "top_p must be in (0, 1]"),
        ("max_tokens", 0, "max_tokens must be >= 1"),
        ("max_tokens", 100, "exceeds the model's max_model_len"),
        ("n", 0, "must be >= 1"),
        ("temperature", -1, "temperature must be >= 0"),
        ("logit_bias", {"600": 1}, "outside the vocabulary"),
        ("stop_token_ids", [600], "outside the vocabulary"),
        ("min_tokens", 40, "min_tokens (40) must be <= max_tokens"),
        # Refused at the HTTP edge: the body's shape.
        ("best_of", 0, "best_of (0) must be >= n (1)"),
        ("logit_bias", {"x": 1}, "keys must be token ids"),
        ("prompt", ["a", "b"], "one request per prompt"),
        ("prompt", [], "non-empty"),
        ("temperature", "hot", "must be a number"),
        ("stop", 5, "string or a list"),
        ("stop", ["a", ""], "stop string #1 is empty"),
        ("tools", [{"type": "function", "function": {"name": "f"}}], "not supported"),
        ("max_tokens", -1, "max_tokens must be a whole number from 0"),
        ("seed", 2**64, "seed must be <="),
        ("priority", 2**40, "32-bit integer"),
        ("prompt", [1, 2**33], "token ids"),
    ],
)
def test_refused_fields_are_400_naming_them(
    base_url: str, fake: FakeScheduler, field: str, value, words: str
) -> None:
    status, body = _post(
        f"{base_url}/completions", {"model": MODEL, "prompt": "Hi", "max_tokens": 8, field: value}
    )
    assert status == 400
    assert words in body["error"]["message"]
    assert body["error"]["param"] == field, body
    assert not fake.submits


def test_the_scheduler_names_the_field_as_data_not_in_words(base_url: str, fake: FakeScheduler) -> None:
    url = f"{base_url}/completions"
    request = {"model": MODEL, "prompt": "Hi", "max_tokens": 4}
    # The field comes from the status details; the message's words do not matter.
    fake.error = (grpc.StatusCode.INVALID_ARGUMENT, "no words about any field here", "sampling.top_k")
    for stream in (False, True):
        status, body = _post(url, {**request, "stream": stream})
        assert (status, body["error"]["param"]) == (400, "top_k"), body
    fake.error = (grpc.StatusCode.INVALID_ARGUMENT, "bad ids", "prompt_token_ids")
    assert _post(url, request)[1]["error"]["param"] == "prompt"
    # A refusal that names no field has no param, whatever its message says.
    fake.error = (grpc.StatusCode.INVALID_ARGUMENT, "max_tokens and the prompt are bad")
    assert _post(url, request)[1]["error"]["param"] is None


def test_chat_names_fields_as_the_body_did(base_url: str, fake: FakeScheduler) -> None:
    url = f"{base_url}/chat/completions"
    messages = [{"role": "user", "content": "Hi"}]
    status, body = _post(url, {"model": MODEL, "messages": messages, "max_completion_tokens": 0})
    assert (status, body["error"]["param"]) == (400, "max_completion_tokens"), body
    status, body = _post(url, {"model": MODEL, "messages": messages, "max_tokens": 0})
    assert (status, body["error"]["param"]) == (400, "max_tokens"), body
    fake.error = (
        grpc.StatusCode.INVALID_ARGUMENT,
        "a prompt token is outside the vocabulary",
        "prompt_token_ids",
    )
    status, body = _post(url, {"model": MODEL, "messages": messages, "max_tokens": 2})
    assert (status, body["error"]["param"]) == (400, "messages"), body


def test_chat_refusals(base_url: str, fake: FakeScheduler) -> None:
    url = f"{base_url}/chat/completions"
    status, body = _post(url, {"model": MODEL, "messages": []})
    assert (status, body["error"]["param"]) == (400, "messages")
    status, body = _post(
        url, {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}
    )
    assert (status, body["error"]["param"]) == (400, "messages[0].content")
    status, body = _post(
        url, {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "top_logprobs": 3}
    )
    assert (status, body["error"]["param"]) == (400, "top_logprobs")
    assert not fake.submits


def test_sampling_fields_reach_the_scheduler(client: openai.OpenAI, fake: FakeScheduler) -> None:
    client.completions.create(
        model=MODEL,
        prompt="Hi",
        max_tokens=8,
        temperature=0.5,
        top_p=0.9,
        seed=11,
        user="alice",
        extra_body={"top_k": 5, "min_p": 0.1, "ignore_eos": True, "priority": 3},
    )
    submit = fake.submits[-1]
    sampling = submit.sampling
    assert (sampling.max_tokens, sampling.top_k, sampling.seed, sampling.ignore_eos) == (8, 5, 11, True)
    assert sampling.temperature == pytest.approx(0.5)
    assert sampling.top_p == pytest.approx(0.9)
    assert sampling.min_p == pytest.approx(0.1)
    assert (submit.client_id, submit.priority) == ("alice", 3)


def test_n_choices_and_logprobs(client: openai.OpenAI, fake: FakeScheduler) -> None:
    fake.tokens_by_index = {1: fake.tokens[:3]}
    completion = client.completions.create(model=MODEL, prompt="Hi", n=2, logprobs=0, max_tokens=30)
    first, second = completion.choices
    assert first.text == OUTPUT_TEXT
    assert second.text and OUTPUT_TEXT.startswith(second.text) and second.text != OUTPUT_TEXT
    assert first.logprobs.token_logprobs == [-0.5] * len(fake.tokens)
    assert "".join(first.logprobs.tokens) == OUTPUT_TEXT
    assert completion.usage.completion_tokens == len(fake.tokens) + 3

    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], n=2, logprobs=True, max_tokens=30
    )
    assert [c.message.content for c in chat.choices] == [first.text, second.text]
    assert [entry.logprob for entry in chat.choices[1].logprobs.content] == [-0.5] * 3


def test_chat_stream_has_a_role_chunk_per_choice(client: openai.OpenAI, fake: FakeScheduler) -> None:
    fake.tokens_by_index = {1: fake.tokens[:3]}
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Hi"}],
            n=2,
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=30,
        )
    )
    assert [(c.index, c.delta.role) for c in chunks[0].choices] == [(0, "assistant"), (1, "assistant")]
    texts = {0: "", 1: ""}
    for chunk in chunks[1:-1]:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts[0] == OUTPUT_TEXT
    assert OUTPUT_TEXT.startswith(texts[1]) and len(texts[1]) < len(OUTPUT_TEXT)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(fake.tokens) + 3


def test_traceparent_is_continued(base_url: str, fake: FakeScheduler) -> None:
    collector = OtlpCollector()
    init_tracing("http-test", "otlp_grpc", collector.endpoint, 1.0)
    try:
        traceparent = f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"
        status, _ = _post(
            f"{base_url}/completions", {"model": MODEL, "prompt": "Hi"}, headers={"traceparent": traceparent}
        )
        assert status == 200
        flush_tracing()
        request_span = collector.wait_for_span(
            lambda s: s.trace_id == TRACE_ID and s.name == sc.SPAN_FRONTEND_REQUEST
        )
        http_span = collector.tree(TRACE_ID).parent_of(request_span)
        assert http_span is not None and http_span.name == "POST /v1/completions"
        assert http_span.parent_span_id == PARENT_SPAN_ID
    finally:
        shutdown_tracing()
        collector.stop()


def test_chat_request_span_is_a_chat_operation(base_url: str, fake: FakeScheduler) -> None:
    collector = OtlpCollector()
    init_tracing("http-test", "otlp_grpc", collector.endpoint, 1.0)
    try:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}
        status, _ = _post(
            f"{base_url}/chat/completions",
            body,
            headers={"traceparent": f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"},
        )
        assert status == 200
        flush_tracing()
        span = collector.wait_for_span(
            lambda s: s.trace_id == TRACE_ID and s.name == sc.SPAN_FRONTEND_REQUEST
        )
        assert span.attributes[sc.GEN_AI_OPERATION_NAME] == sc.OPERATION_CHAT
    finally:
        shutdown_tracing()
        collector.stop()


def test_client_hanging_up_a_whole_response_aborts_it(base_url: str, fake: FakeScheduler) -> None:
    fake.endless = True
    fake.delay_s = 0.02
    request = urllib.request.Request(
        f"{base_url}/completions",
        data=json.dumps({"model": MODEL, "prompt": "Hi", "max_tokens": 40}).encode(),
        headers={"Content-Type": "application/json"},
    )
    # The fake streams for far longer than this client waits: it gives up and closes the connection.
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        urllib.request.urlopen(request, timeout=0.5)
    deadline = time.monotonic() + 10
    while not fake.aborts and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fake.aborts == [fake.submits[-1].request_id]


def test_stopping_the_server_aborts_requests_in_flight(
    loop: LoopThread, model_dir: Path, fake_server: tuple[FakeScheduler, str], fake: FakeScheduler
) -> None:
    fake.endless = True
    fake.delay_s = 0.02
    server = _start_frontend(loop, model_dir, [fake_server[1]])
    assert server.http_server is not None
    url = f"http://127.0.0.1:{server.http_server.port}/v1/completions"
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 40, "stream": True}
    with httpx2.Client(timeout=20) as http, http.stream("POST", url, json=body) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        assert next(line for line in lines if line).startswith("data: {")
        # Stopping waits at most the shutdown grace for the live stream, then cancels it.
        loop.run(server.stop(0))
    deadline = time.monotonic() + 10
    while not fake.aborts and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fake.aborts == [fake.submits[-1].request_id]


def test_strict_request_fields_refuses_unknown_fields_by_name(
    loop: LoopThread,
    model_dir: Path,
    fake_server: tuple[FakeScheduler, str],
    fake: FakeScheduler,
    base_url: str,
) -> None:
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 1, "some_future_field": 1}
    # Default (as vLLM): ignored.
    status, _ = _post(f"{base_url}/completions", body)
    assert status == 200
    server = _start_frontend(loop, model_dir, [fake_server[1]], strict_request_fields=True)
    try:
        assert server.http_server is not None
        status, answer = _post(f"http://127.0.0.1:{server.http_server.port}/v1/completions", body)
        assert status == 400
        assert answer["error"]["param"] == "some_future_field"
        assert "strict_request_fields" in answer["error"]["message"]
    finally:
        loop.run(server.stop(0))


def test_a_large_chat_is_rendered_and_tokenized_off_the_event_loop(
    loop: LoopThread, model_dir: Path, fake_server: tuple[FakeScheduler, str]
) -> None:
    tokenizer = FrontendTokenizer.from_model_path(model_dir)
    encode = tokenizer.encode
    on_loop: list[tuple[int, bool]] = []

    def recording_encode(text: str, *args, **kwargs) -> list[int]:
        try:
            asyncio.get_running_loop()
            running = True
        except RuntimeError:
            running = False
        on_loop.append((len(text), running))
        return encode(text, *args, **kwargs)

    tokenizer.encode = recording_encode

    async def start() -> FrontendServer:
        settings = config_from_options(
            "frontend", port=0, model_path=str(model_dir), scheduler_addresses=[fake_server[1]],
            http_port=free_port(), default_max_tokens=4,
        )  # fmt: skip
        server = FrontendServer(settings, tokenizer=tokenizer)
        await server.start()
        return server

    server = loop.run(start())
    try:
        url = f"http://127.0.0.1:{server.http_server.port}"
        for words in (3, 2000):
            messages = [{"role": "user", "content": "word " * words}]
            _post(f"{url}/v1/chat/completions", {"model": MODEL, "messages": messages, "max_tokens": 2})
            _post(f"{url}/tokenize", {"model": MODEL, "messages": messages})
    finally:
        loop.run(server.stop(0))
    small = [running for size, running in on_loop if size < 1000]
    large = [running for size, running in on_loop if size >= 10000]
    print("encode calls (chars, on the event loop):", on_loop)
    assert len(small) >= 2 and all(small)
    assert len(large) == 2 and not any(large)

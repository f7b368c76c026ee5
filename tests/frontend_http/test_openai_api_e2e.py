"""The OpenAI-compatible HTTP API on a real cluster, driven by the real `openai` client.

Compares the HTTP answers with gRPC Generate on the same cluster (same greedy text), streaming
with non-streaming, chat prompts with transformers' apply_chat_template, and checks that a
client hanging up mid-stream frees the request's KV blocks.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx2
import openai
import pytest
import transformers
from infermesh.v1 import frontend_pb2
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.harness import (
    build_served_model,
    frontend_stub,
    generate_request,
    start_cluster,
    wait_all_blocks_free,
)
from tests.free_port import free_port

PROMPT = "The quick brown fox"
TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_served_model("llama", tmp_path_factory.mktemp("http-model"))


@pytest.fixture(scope="module")
def cluster(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[object, str]]:
    http_port, metrics_port = free_port(), free_port()
    running = start_cluster(
        model_dir,
        tmp_path_factory.mktemp("http-logs"),
        scheduler_args=["--dtype", "fp32"],
        frontend_args=["--http-port", str(http_port), "--metrics-port", str(metrics_port)],
    )
    running.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        yield running, f"http://127.0.0.1:{http_port}/v1"
    finally:
        running.stop()


@pytest.fixture
def client(cluster: tuple[object, str]) -> Iterator[openai.OpenAI]:
    running, base_url = cluster
    # No retries: a 429/503 must reach the test as it was sent.
    with openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=TIMEOUT_S) as client:
        yield client
    wait_all_blocks_free(running.scheduler_address)


@pytest.fixture(scope="module")
def model_id(cluster: tuple[object, str]) -> str:
    _, base_url = cluster
    with openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0) as client:
        return client.models.list().data[0].id


def test_models_lists_the_served_model(client: openai.OpenAI, model_dir: Path) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == [model_dir.name]
    assert models[0].owned_by == "infermesh"
    assert models[0].model_extra["max_model_len"] == 1024


def test_greedy_completion_equals_grpc_generate(client: openai.OpenAI, cluster, model_id: str) -> None:
    running, _ = cluster
    grpc_response = frontend_stub(running.frontend_address).Generate(
        frontend_pb2.GenerateRequest(input=generate_request(text=PROMPT, temperature=0.0, max_tokens=12)),
        timeout=TIMEOUT_S,
    )
    completion = client.completions.create(model=model_id, prompt=PROMPT, max_tokens=12, temperature=0)
    choice = completion.choices[0]
    assert choice.text == grpc_response.completions[0].text
    assert choice.text
    assert choice.finish_reason == "length"
    assert completion.object == "text_completion"
    assert completion.usage.prompt_tokens == grpc_response.usage.prompt_tokens
    assert completion.usage.completion_tokens == 12
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 12

    # A prompt given as token ids is the same request.
    ids = list(grpc_response.completions[0].token_ids)
    tokenized = client.completions.create(
        model=model_id, prompt=_prompt_ids(running.frontend_address), max_tokens=12, temperature=0
    )
    assert tokenized.choices[0].text == choice.text
    assert len(ids) == 12


def _prompt_ids(frontend_address: str) -> list[int]:
    response = frontend_stub(frontend_address).Tokenize(
        frontend_pb2.TokenizeRequest(text=PROMPT, add_special_tokens=True), timeout=TIMEOUT_S
    )
    return list(response.token_ids)


def test_streaming_concatenation_equals_non_streaming(client: openai.OpenAI, model_id: str) -> None:
    whole = client.completions.create(
        model=model_id, prompt=PROMPT, max_tokens=16, temperature=0, seed=7, logprobs=0
    )
    chunks = list(
        client.completions.create(
            model=model_id,
            prompt=PROMPT,
            max_tokens=16,
            temperature=0,
            seed=7,
            logprobs=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(chunk.choices[0].text for chunk in chunks if chunk.choices)
    assert text == whole.choices[0].text
    finish = [
        chunk.choices[0].finish_reason for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason
    ]
    assert finish == ["length"]
    # The last chunk carries usage only; the others have none.
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 16
    assert all(chunk.usage is None for chunk in chunks[:-1])
    streamed_logprobs = [lp for c in chunks if c.choices for lp in c.choices[0].logprobs.token_logprobs]
    assert len(whole.choices[0].logprobs.token_logprobs) == 16
    assert streamed_logprobs == pytest.approx(whole.choices[0].logprobs.token_logprobs, abs=1e-4)
    assert all(lp <= 0 for lp in streamed_logprobs)


def test_stop_string_ends_the_completion(client: openai.OpenAI, model_id: str) -> None:
    whole = client.completions.create(model=model_id, prompt=PROMPT, max_tokens=16, temperature=0)
    text = whole.choices[0].text
    # A stop string taken from the middle of the greedy output ends it right before the match.
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    if not stop.strip():
        stop = text[-2:]
    cut = client.completions.create(model=model_id, prompt=PROMPT, max_tokens=16, temperature=0, stop=[stop])
    assert cut.choices[0].text == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_chat_prompt_is_the_transformers_chat_template(
    client: openai.OpenAI, model_dir: Path, model_id: str
) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a colour."},
    ]
    reference = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    rendered = reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt_ids = reference(rendered, add_special_tokens=False)["input_ids"]

    chat = client.chat.completions.create(model=model_id, messages=messages, max_tokens=10, temperature=0)
    plain = client.completions.create(model=model_id, prompt=prompt_ids, max_tokens=10, temperature=0)
    assert chat.object == "chat.completion"
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].message.content == plain.choices[0].text
    assert chat.usage.prompt_tokens == len(prompt_ids)

    stream = list(
        client.chat.completions.create(
            model=model_id, messages=messages, max_tokens=10, temperature=0, stream=True
        )
    )
    assert stream[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in stream) == chat.choices[0].message.content
    assert stream[-1].choices[0].finish_reason == chat.choices[0].finish_reason


def test_errors_are_openai_json(client: openai.OpenAI, model_id: str) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model=model_id, prompt=PROMPT, temperature=-1)
    assert bad.value.status_code == 400
    assert "temperature must be >= 0" in bad.value.body["message"]
    with pytest.raises(openai.NotFoundError) as missing:
        client.completions.create(model="no-such-model", prompt=PROMPT)
    assert missing.value.body["code"] == "model_not_found"
    assert model_id in missing.value.body["message"]
    with pytest.raises(openai.BadRequestError) as echo:
        client.completions.create(model=model_id, prompt=PROMPT, echo=True, logprobs=0)
    assert echo.value.body["param"] == "echo"
    with pytest.raises(openai.BadRequestError) as penalty:
        client.completions.create(model=model_id, prompt=PROMPT, presence_penalty=5)
    assert penalty.value.body["param"] == "presence_penalty"
    with pytest.raises(openai.BadRequestError) as too_long:
        client.completions.create(model=model_id, prompt=PROMPT, max_tokens=5000)
    assert "max_model_len" in too_long.value.body["message"]
    assert too_long.value.body["param"] == "max_tokens"


def test_raw_http_error_body(cluster) -> None:
    _, base_url = cluster
    request = urllib.request.Request(
        f"{base_url}/completions", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=TIMEOUT_S)
    assert error.value.code == 400
    body = json.loads(error.value.read())
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert "not valid JSON" in body["error"]["message"]


def _cancelled_requests(metrics_url: str) -> float:
    with urllib.request.urlopen(metrics_url, timeout=TIMEOUT_S) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "infermesh_requests_total" and sample.labels.get("status") == "cancelled":
                return sample.value
    return 0.0


def test_client_hanging_up_mid_stream_frees_blocks(cluster, model_id: str) -> None:
    running, base_url = cluster
    cancelled_before = _cancelled_requests(running.metrics_url)
    body = {
        "model": model_id,
        "prompt": PROMPT,
        "max_tokens": 1000,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx2.Client(timeout=TIMEOUT_S) as http:
        with http.stream("POST", f"{base_url}/completions", json=body) as response:
            assert response.status_code == 200
            received = [line for _, line in zip(range(6), response.iter_lines(), strict=False)]
            assert any(line.startswith("data: {") for line in received)
        # Leaving the block closes the connection while the request is still generating.
    # The frontend counts the request as cancelled (not finished) and aborts it at the scheduler.
    deadline = time.monotonic() + 20
    while _cancelled_requests(running.metrics_url) == cancelled_before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _cancelled_requests(running.metrics_url) == cancelled_before + 1
    load = wait_all_blocks_free(running.scheduler_address, timeout_s=20)
    assert load.num_running == 0

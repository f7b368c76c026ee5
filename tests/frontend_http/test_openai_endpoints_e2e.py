"""vLLM's routes and fields on a real cluster with the real `openai` client: served model names,
/health /ping /version /tokenize /detokenize /openapi.json, fields vLLM accepts, best_of, echo,
continuous usage stats, no max_tokens running to the context limit, and n=2 with the defaults."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.e2e.harness import build_served_model, start_cluster, wait_all_blocks_free
from tests.free_port import free_port

pytestmark = pytest.mark.e2e
NAMES = ("org/demo-model", "demo")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[object, str]]:
    model_dir: Path = build_served_model(
        "llama", tmp_path_factory.mktemp("endpoints-model"), max_position_embeddings=128
    )
    http_port = free_port()
    # Scheduler defaults (copy-on-write, dtype auto); the frontend only gets a port and names.
    running = start_cluster(
        model_dir,
        tmp_path_factory.mktemp("endpoints-logs"),
        frontend_args=["--http-port", str(http_port), "--served-model-name", ",".join(NAMES)],
    )
    try:
        yield running, f"http://127.0.0.1:{http_port}"
    finally:
        running.stop()


@pytest.fixture
def client(served) -> Iterator[openai.OpenAI]:
    running, base = served
    with openai.OpenAI(base_url=f"{base}/v1", api_key="-", max_retries=0, timeout=120) as client:
        yield client
    wait_all_blocks_free(running.scheduler_address)


def _call(url: str, body: dict | None = None) -> tuple[int, object]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def test_served_names_and_model_retrieve(client):
    assert [m.id for m in client.models.list().data] == list(NAMES)
    assert client.models.retrieve(NAMES[0]).id == NAMES[0]
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("other")
    assert err.value.body["param"] == "model"
    answer = client.completions.create(model=NAMES[1], prompt="Hi", max_tokens=2)
    assert answer.model == NAMES[1]


def test_info_routes(served):
    _, base = served
    assert _call(f"{base}/health")[0] == 200
    assert _call(f"{base}/ping")[0] == 200
    status, version = _call(f"{base}/version")
    assert status == 200 and version["version"]
    status, tokens = _call(f"{base}/tokenize", {"model": NAMES[0], "prompt": "Hello world"})
    assert status == 200 and tokens["count"] == len(tokens["tokens"]) > 0 and tokens["max_model_len"] > 0
    status, text = _call(f"{base}/detokenize", {"model": NAMES[0], "tokens": tokens["tokens"]})
    assert status == 200 and "Hello world" in text["prompt"]
    status, chat_tokens = _call(f"{base}/tokenize", {"messages": [{"role": "user", "content": "Hi"}]})
    assert status == 200 and chat_tokens["count"] > 0
    status, error = _call(f"{base}/detokenize", {"tokens": [10**9]})
    assert status == 400 and error["error"]["param"] == "tokens"
    status, spec = _call(f"{base}/openapi.json")
    assert status == 200 and spec["openapi"].startswith("3.")
    for path in ("/v1/completions", "/v1/chat/completions", "/v1/models/{model_id}", "/tokenize", "/health"):
        assert path in spec["paths"], path
    assert "CompletionRequest" in spec["components"]["schemas"]


def test_vllm_fields_are_accepted(client):
    extra = {
        "stop_token_ids": [0],
        "ignore_eos": False,
        "skip_special_tokens": True,
        "spaces_between_special_tokens": True,
        "include_stop_str_in_output": False,
        "chat_template_kwargs": {"enable_thinking": False},
        "add_generation_prompt": True,
        "min_tokens": 0,
        "repetition_penalty": 1.0,
        "parallel_tool_calls": True,
        "some_future_field": 1,  # unknown: ignored by default, as vLLM
    }
    chat = client.chat.completions.create(
        model=NAMES[0],
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=3,
        user="u1",
        store=False,
        metadata={"k": "v"},
        extra_body=extra,
    )
    assert chat.choices[0].message.role == "assistant"


def test_type_errors_name_their_field(served):
    _, base = served
    status, body = _call(f"{base}/v1/chat/completions", {"model": NAMES[0], "messages": [{"role": 5}]})
    assert status == 400 and body["error"]["param"] == "messages[0].role"
    # The scheduler's refusal (prompt + max_tokens over max_model_len) names max_tokens.
    status, body = _call(f"{base}/v1/completions", {"model": NAMES[0], "prompt": "Hi", "max_tokens": 10**6})
    assert status == 400 and body["error"]["param"] == "max_tokens"


def test_n2_and_best_of_on_default_scheduler(client):
    answer = client.completions.create(model=NAMES[0], prompt="Once", max_tokens=4, n=2, seed=1)
    assert len(answer.choices) == 2
    best = client.completions.create(
        model=NAMES[0], prompt="Once", max_tokens=4, n=1, seed=1, extra_body={"best_of": 3}
    )
    assert len(best.choices) == 1 and best.choices[0].index == 0


def test_echo_and_include_stop_str(client):
    answer = client.completions.create(
        model=NAMES[0], prompt="Echo me", max_tokens=3, echo=True, temperature=0
    )
    assert answer.choices[0].text.startswith("Echo me")


def test_streamed_continuous_usage(client):
    stream = client.chat.completions.create(
        model=NAMES[0],
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True},
    )
    chunks = list(stream)
    with_usage = [c for c in chunks if c.usage is not None]
    assert len(with_usage) >= 2 and with_usage[-1].usage.completion_tokens == 4
    assert with_usage[0].usage.prompt_tokens == with_usage[-1].usage.prompt_tokens > 0


def test_no_max_tokens_runs_to_the_context_limit(client):
    answer = client.completions.create(
        model=NAMES[0], prompt=[1, 2, 3], temperature=0, extra_body={"ignore_eos": True}
    )
    limit = client.models.retrieve(NAMES[0]).model_extra["max_model_len"]
    assert answer.usage.completion_tokens == limit - 3
    assert answer.choices[0].finish_reason == "length"


def test_penalties_change_the_output_deterministically(client):
    def text(**extra) -> str:
        answer = client.completions.create(
            model=NAMES[0], prompt="The cat", max_tokens=24, temperature=0.8, seed=7, extra_body=extra
        )
        return answer.choices[0].text

    plain = text()
    assert text() == plain  # seeded: the same output again
    penalised = text(presence_penalty=2.0, frequency_penalty=2.0, repetition_penalty=1.8)
    assert penalised == text(presence_penalty=2.0, frequency_penalty=2.0, repetition_penalty=1.8)
    assert penalised != plain


def test_logit_bias_and_min_tokens(client):
    tokens = client.completions.create(
        model=NAMES[0], prompt="Hi", max_tokens=6, temperature=0, logit_bias={"42": 100}, logprobs=0
    )
    assert all(t == tokens.choices[0].logprobs.tokens[0] for t in tokens.choices[0].logprobs.tokens)
    forced = client.completions.create(
        model=NAMES[0],
        prompt="Hi",
        max_tokens=8,
        temperature=0,
        logit_bias={"2": 100},
        extra_body={"min_tokens": 5},
    )
    # Token 2 is EOS: favoured by the bias, it can end the completion only once 5 tokens were generated.
    assert forced.usage.completion_tokens == 6 and forced.choices[0].finish_reason == "stop"


def test_top_logprobs_with_bytes_that_rebuild_the_text(client):
    answer = client.chat.completions.create(
        model=NAMES[0],
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=12,
        temperature=0,
        logprobs=True,
        top_logprobs=5,
    )
    content = answer.choices[0].logprobs.content
    assert len(content) == answer.usage.completion_tokens
    joined = b"".join(bytes(entry.bytes) for entry in content)
    assert joined.decode("utf-8", errors="replace") == answer.choices[0].message.content
    for entry in content:
        assert len(entry.top_logprobs) == 5
        values = [alt.logprob for alt in entry.top_logprobs]
        assert values == sorted(values, reverse=True)
        # Greedy: the sampled token is the most likely one.
        assert entry.top_logprobs[0].bytes == entry.bytes
        assert abs(entry.top_logprobs[0].logprob - entry.logprob) < 1e-4
    completion = client.completions.create(
        model=NAMES[0], prompt="Hi", max_tokens=4, temperature=0, logprobs=3
    )
    assert all(len(alternatives) >= 1 for alternatives in completion.choices[0].logprobs.top_logprobs)

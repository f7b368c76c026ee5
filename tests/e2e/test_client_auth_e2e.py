"""`infermesh up --api-key`: clients authenticate over HTTP and gRPC, health stays open, request
ids are scoped per client, and oversized requests are refused before any work without stalling
the streams of others."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import grpc
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from infermesh.v1 import frontend_pb2, frontend_pb2_grpc
from infermesh_shared.grpc_transport import open_channel

from tests.e2e.up_cluster import UpCluster, rpc_code, up_cluster
from tests.free_port import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

KEY_A = "sk-tenant-a-0123456789"
KEY_B = "sk-tenant-b-9876543210"
MAX_PROMPT_BYTES = 65536
MODEL = "infermesh-demo-llama-v1"
HEADER_TIMEOUT_MS = 5000
HALF_OPEN = 5000


def _auth(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpCluster]:
    args = (
        "--api-key", KEY_A,
        f"--frontend-arg=--api-keys={KEY_B}",
        # up's own --http-port (default 8000) comes after the --frontend-arg flags and wins.
        "--http-port", str(free_port()),
        f"--frontend-arg=--max-prompt-bytes={MAX_PROMPT_BYTES}",
        f"--frontend-arg=--http-header-timeout-ms={HEADER_TIMEOUT_MS}",
        "--frontend-arg=--http-max-connections=8192",
    )  # fmt: skip
    with up_cluster(tmp_path_factory.mktemp("auth-up"), *args) as running:
        yield running


def _http_base(cluster: UpCluster) -> str:
    return f"http://{cluster.announced('frontend-0', 'frontend http')}/v1"


def _input(text: str, **sampling) -> frontend_pb2.GenerateInput:
    params = frontend_pb2.ClientSamplingParams(temperature=0, **sampling)
    return frontend_pb2.GenerateInput(text=text, sampling=params)


def test_openai_client_needs_the_key(cluster: UpCluster) -> None:
    anonymous = openai.OpenAI(base_url=_http_base(cluster), api_key="not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        anonymous.completions.create(model=MODEL, prompt="Hello", max_tokens=4)
    assert refused.value.status_code == 401
    assert refused.value.body["code"] == "invalid_api_key"
    client = openai.OpenAI(base_url=_http_base(cluster), api_key=KEY_A, max_retries=0)
    completion = client.completions.create(model=MODEL, prompt="Hello", max_tokens=4, temperature=0)
    assert completion.usage.completion_tokens == 4
    print("openai: without key 401, with key", completion.usage.completion_tokens, "tokens")


def test_grpc_needs_the_key_and_health_does_not(cluster: UpCluster) -> None:
    with open_channel(cluster.frontend_address) as channel:
        stub = frontend_pb2_grpc.FrontendServiceStub(channel)
        request = frontend_pb2.GenerateRequest(input=_input("Hello", max_tokens=4))
        codes = {
            "no key": rpc_code(lambda: stub.Generate(request, timeout=60)),
            "wrong key": rpc_code(lambda: stub.Generate(request, timeout=60, metadata=_auth("nope"))),
            "stream, no key": rpc_code(
                lambda: stub.GenerateStream(
                    frontend_pb2.GenerateStreamRequest(input=request.input), timeout=60
                )
            ),
            "key": rpc_code(lambda: stub.Generate(request, timeout=60, metadata=_auth(KEY_A))),
        }
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    print("grpc:", {k: v.name for k, v in codes.items()}, "health:", health.status)
    assert codes == {
        "no key": grpc.StatusCode.UNAUTHENTICATED,
        "wrong key": grpc.StatusCode.UNAUTHENTICATED,
        "stream, no key": grpc.StatusCode.UNAUTHENTICATED,
        "key": grpc.StatusCode.OK,
    }
    assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_cli_generate_takes_the_key_from_the_environment(cluster: UpCluster) -> None:
    argv = [sys.executable, "-m", "infermesh_cli", "generate", "--address", cluster.frontend_address]
    argv += ["--max-tokens", "4", "Hello"]
    refused = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "UNAUTHENTICATED" in refused.stderr
    env = {**cluster.env, "INFERMESH_API_KEY": KEY_B}
    served = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    assert served.returncode == 0, served.stderr


def test_two_tenants_may_use_the_same_request_id(cluster: UpCluster) -> None:
    results: dict[str, frontend_pb2.GenerateResponse] = {}

    def run(key: str, text: str) -> None:
        with open_channel(cluster.frontend_address) as channel:
            stub = frontend_pb2_grpc.FrontendServiceStub(channel)
            request_input = _input(text, max_tokens=24, ignore_eos=True)
            request_input.request_id = "shared-id"
            results[key] = stub.Generate(
                frontend_pb2.GenerateRequest(input=request_input), timeout=120, metadata=_auth(key)
            )

    alone = {
        key: cluster.greedy(text, 24, metadata=_auth(key))
        for key, text in ((KEY_A, "Tenant A"), (KEY_B, "B!"))
    }
    threads = [threading.Thread(target=run, args=args) for args in ((KEY_A, "Tenant A"), (KEY_B, "B!"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    for key in (KEY_A, KEY_B):
        assert results[key].request_id == "shared-id"
        assert list(results[key].completions[0].token_ids) == alone[key]


def _post(url: str, body: dict, key: str) -> tuple[int, str]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as page:
            return page.status, ""
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())["error"]["type"]


def _frontend_rss_kb(cluster: UpCluster) -> int:
    out = subprocess.run(
        ["ps", "-o", "pid=,args=", "--ppid", str(cluster.process.pid)], capture_output=True, text=True
    )
    (pid,) = [line.split()[0] for line in out.stdout.splitlines() if "infermesh_frontend" in line]
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


_STREAMER = """
import sys, time
from infermesh.v1 import frontend_pb2, frontend_pb2_grpc
from infermesh_shared.grpc_transport import open_channel
address, key = sys.argv[1], sys.argv[2]
with open_channel(address) as channel:
    stub = frontend_pb2_grpc.FrontendServiceStub(channel)
    params = frontend_pb2.ClientSamplingParams(temperature=0, max_tokens=400, ignore_eos=True)
    prompt = frontend_pb2.GenerateInput(text="Stream", sampling=params)
    request = frontend_pb2.GenerateStreamRequest(input=prompt)
    for _ in stub.GenerateStream(request, timeout=300, metadata=(("authorization", "Bearer " + key),)):
        print(time.monotonic(), flush=True)
"""


def test_oversized_requests_are_refused_before_work_without_stalling_a_stream(cluster: UpCluster) -> None:
    # The stream runs in its own process so the test's own work (building 10,000 stop strings)
    # cannot delay it; CLOCK_MONOTONIC is one clock for both processes.
    streamer = subprocess.Popen(
        [sys.executable, "-c", _STREAMER, cluster.frontend_address, KEY_A], stdout=subprocess.PIPE, text=True
    )
    assert streamer.stdout is not None
    stamps = [float(streamer.stdout.readline()) for _ in range(80)]
    rss_before = _frontend_rss_kb(cluster)
    bad_start = time.monotonic()
    bad = {
        "n=1000000": _input("Hi", n=1_000_000),
        "prompt over max_prompt_bytes": _input("x" * (MAX_PROMPT_BYTES * 4)),
        "10000 stop strings": _input("Hi", stop=[f"s{i}" for i in range(10_000)]),
    }
    codes = {}
    with open_channel(cluster.frontend_address) as channel:
        stub = frontend_pb2_grpc.FrontendServiceStub(channel)
        for _ in range(3):
            for name, request_input in bad.items():
                codes[name] = rpc_code(
                    lambda r=request_input: stub.Generate(
                        frontend_pb2.GenerateRequest(input=r), timeout=60, metadata=_auth(KEY_A)
                    )
                )
    http_codes = {}
    for name, body in {
        "n=1000000": {"model": MODEL, "prompt": "Hi", "n": 1_000_000},
        "prompt over max_prompt_bytes": {"model": MODEL, "prompt": "x" * (MAX_PROMPT_BYTES * 4)},
        "10000 stop strings": {"model": MODEL, "prompt": "Hi", "stop": [f"s{i}" for i in range(10_000)]},
    }.items():
        http_codes[name] = _post(f"{_http_base(cluster)}/completions", body, KEY_A)
    bad_end = time.monotonic()
    rss_after = _frontend_rss_kb(cluster)
    stamps += [float(line) for line in streamer.stdout]
    assert streamer.wait(60) == 0
    gaps = [(b, b - a) for a, b in zip(stamps, stamps[1:], strict=False)]
    before = max(gap for end, gap in gaps[5:] if end < bad_start)
    # A gap overlapping the bad requests counts, and so does the first one after them.
    after_end = [gap for end, gap in gaps if end >= bad_end][:1]
    during = max([gap for end, gap in gaps if bad_start <= end < bad_end] + after_end)
    print(
        f"bad requests: grpc { ({k: v.name for k, v in codes.items()}) } http {http_codes}; "
        f"stream max gap before {before * 1000:.1f} ms, during {during * 1000:.1f} ms "
        f"(ratio {during / before:.2f}); frontend RSS {rss_before} -> {rss_after} kB"
    )
    assert all(code == grpc.StatusCode.INVALID_ARGUMENT for code in codes.values()), codes
    assert all(status == 400 and kind == "invalid_request_error" for status, kind in http_codes.values())
    assert during <= 3 * before
    assert rss_after - rss_before < 8 * 1024


def test_half_open_connections_do_not_starve_other_clients(cluster: UpCluster) -> None:
    log = cluster.log_dir / "frontend-0.log"
    log_before = log.stat().st_size
    host, port = cluster.announced("frontend-0", "frontend http").rsplit(":", 1)
    sockets = []
    try:
        for _ in range(HALF_OPEN):
            sock = socket.create_connection((host, int(port)), timeout=10)
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Le")
            sockets.append(sock)
        opened = time.monotonic()
        # Served meanwhile: a gRPC client and a normal HTTP client.
        tokens = cluster.greedy("Still served", 4, metadata=_auth(KEY_A))
        status, _ = _get(f"{_http_base(cluster)}/models", KEY_A)
        served_after_s = time.monotonic() - opened
        assert len(tokens) == 4 and status == 200
        # Every half-open connection is closed by the frontend after the header timeout.
        closed = 0
        deadline = opened + HEADER_TIMEOUT_MS / 1000 * 3 + 30
        for sock in sockets:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                if sock.recv(1) == b"":
                    closed += 1
            except (TimeoutError, ConnectionResetError):
                closed += isinstance(sys.exc_info()[1], ConnectionResetError)
        closed_after_s = time.monotonic() - opened
    finally:
        for sock in sockets:
            sock.close()
    log_growth = log.stat().st_size - log_before
    print(
        f"{HALF_OPEN} half-open connections: gRPC and HTTP served {served_after_s:.1f}s after opening them, "
        f"{closed} closed by the frontend within {closed_after_s:.1f}s "
        f"(header timeout {HEADER_TIMEOUT_MS} ms), "
        f"frontend log grew {log_growth} bytes"
    )
    assert closed == HALF_OPEN
    assert log_growth < 8 * 1024


def _get(url: str, key: str) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=60) as page:
        return page.status, page.read().decode()


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "m", "prompt": "\\ud800 lone"}',
        b'{"model": "m", "prompt": "x", "extra": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ],
    ids=["lone-surrogate", "deeply-nested"],
)
def test_hostile_json_gets_a_400_in_the_openai_shape(cluster: UpCluster, raw: bytes) -> None:
    request = urllib.request.Request(
        f"{_http_base(cluster)}/completions",
        data=raw,
        headers={"Authorization": f"Bearer {KEY_A}", "Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    body = json.loads(refused.value.read())
    assert refused.value.code == 400, body
    assert body["error"]["type"] == "invalid_request_error"


def _cached_prompt_tokens(cluster: UpCluster, key: str, text: str, salt: str = "") -> int:
    with open_channel(cluster.frontend_address) as channel:
        stub = frontend_pb2_grpc.FrontendServiceStub(channel)
        request_input = _input(text, max_tokens=2)
        request_input.cache_salt = salt
        response = stub.Generate(
            frontend_pb2.GenerateRequest(input=request_input), timeout=120, metadata=_auth(key)
        )
    return response.usage.cached_prompt_tokens


def test_prefix_cache_hits_never_cross_tenants(cluster: UpCluster) -> None:
    prompt = "A long enough prompt for several KV blocks: " + "tenant A's private words " * 12
    first_a = _cached_prompt_tokens(cluster, KEY_A, prompt)
    again_a = _cached_prompt_tokens(cluster, KEY_A, prompt)
    first_b = _cached_prompt_tokens(cluster, KEY_B, prompt)
    again_b = _cached_prompt_tokens(cluster, KEY_B, prompt)
    other_salt_b = _cached_prompt_tokens(cluster, KEY_B, prompt, salt="another-namespace")
    print(
        f"cached_prompt_tokens: A {first_a} then {again_a}; B on A's prompt {first_b}, B again {again_b}; "
        f"B with another cache_salt {other_salt_b}"
    )
    assert again_a > 0 and again_b > 0
    assert first_b == 0 and other_salt_b == 0


def _post_json(url: str, body: dict, key: str) -> dict:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as page:
        return json.loads(page.read())


def _cached_for_ids(cluster: UpCluster, key: str, ids: list[int], salt: str) -> int:
    with open_channel(cluster.frontend_address) as channel:
        stub = frontend_pb2_grpc.FrontendServiceStub(channel)
        request_input = frontend_pb2.GenerateInput(
            token_ids=frontend_pb2.TokenIds(ids=ids),
            sampling=frontend_pb2.ClientSamplingParams(temperature=0, max_tokens=2),
            cache_salt=salt,
        )
        response = stub.Generate(
            frontend_pb2.GenerateRequest(input=request_input), timeout=120, metadata=_auth(key)
        )
    return response.usage.cached_prompt_tokens


def test_http_cache_salt_names_the_same_namespace_as_the_grpc_field(cluster: UpCluster) -> None:
    """An HTTP request with cache_salt warms exactly the namespace a gRPC request with the same
    cache_salt (and key) reads; another salt, or none, sees nothing of it."""
    base = _http_base(cluster)
    prompt = "Salted completion prompt spanning several KV blocks: " + "http salt words " * 12
    messages = [{"role": "user", "content": "Salted chat prompt: " + "chat salt words " * 12}]
    common = {"model": MODEL, "max_tokens": 2, "temperature": 0}
    _post_json(f"{base}/completions", {**common, "prompt": prompt, "cache_salt": "s-http"}, KEY_A)
    _post_json(f"{base}/chat/completions", {**common, "messages": messages, "cache_salt": "s-chat"}, KEY_A)
    root = base.removesuffix("/v1")
    prompt_ids = _post_json(f"{root}/tokenize", {"model": MODEL, "prompt": prompt}, KEY_A)["tokens"]
    chat_ids = _post_json(f"{root}/tokenize", {"model": MODEL, "messages": messages}, KEY_A)["tokens"]
    cached = {
        "completion, same salt": _cached_for_ids(cluster, KEY_A, prompt_ids, "s-http"),
        "completion, other salt": _cached_for_ids(cluster, KEY_A, prompt_ids, "s-other"),
        "chat, same salt": _cached_for_ids(cluster, KEY_A, chat_ids, "s-chat"),
        "chat, no salt": _cached_for_ids(cluster, KEY_A, chat_ids, ""),
    }
    print("cached_prompt_tokens after HTTP requests with cache_salt:", cached)
    assert cached["completion, same salt"] > 0 and cached["chat, same salt"] > 0
    assert cached["completion, other salt"] == 0 and cached["chat, no salt"] == 0


@pytest.mark.parametrize("salt", ["", 7, "x" * 257])
def test_a_bad_cache_salt_is_a_400(cluster: UpCluster, salt: object) -> None:
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 1, "cache_salt": salt}
    status, kind = _post(f"{_http_base(cluster)}/completions", body, KEY_A)
    assert (status, kind) == (400, "invalid_request_error")


def test_a_long_grpc_cache_salt_is_invalid_argument(cluster: UpCluster) -> None:
    with open_channel(cluster.frontend_address) as channel:
        stub = frontend_pb2_grpc.FrontendServiceStub(channel)
        request_input = _input("hi", max_tokens=1)
        request_input.cache_salt = "x" * 257
        code = rpc_code(
            lambda: stub.Generate(
                frontend_pb2.GenerateRequest(input=request_input), timeout=60, metadata=_auth(KEY_A)
            )
        )
    assert code == grpc.StatusCode.INVALID_ARGUMENT

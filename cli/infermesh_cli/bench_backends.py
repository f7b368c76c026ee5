"""The clients `infermesh bench` drives: infermesh's gRPC frontend, or any OpenAI-compatible server.

Each backend sends one request and reports when every chunk of tokens arrived, so the report can
compute TTFT, inter-token latency, TPOT and end-to-end time the same way for every server.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from infermesh_cli.bench_workload import BenchRequest

BACKENDS = ("infermesh", "openai", "openai-chat")


@dataclass(slots=True)
class RequestResult:
    """What one request measured; times are time.perf_counter() seconds."""

    start: float
    # (arrival time, tokens in that chunk) for every chunk that carried tokens.
    chunks: list[tuple[float, int]] = field(default_factory=list)
    end: float = 0.0
    prompt_tokens: int = 0
    error: str = ""

    @property
    def output_tokens(self) -> int:
        return sum(count for _, count in self.chunks)

    @property
    def ok(self) -> bool:
        return not self.error and bool(self.chunks)


@dataclass(slots=True, frozen=True)
class ServedModel:
    name: str
    vocab_size: int
    max_model_len: int


class Backend(Protocol):
    async def model(self) -> ServedModel: ...

    async def send(self, request: BenchRequest) -> RequestResult: ...

    async def close(self) -> None: ...


class GrpcBackend:
    """infermesh's FrontendService.GenerateStream."""

    def __init__(
        self, address: str, api_key: str | None = None, tls_ca_file: str = "", session_id: str = ""
    ) -> None:
        from infermesh.v1 import frontend_pb2_grpc
        from infermesh_shared.grpc_transport import PLAINTEXT, TlsFiles, open_aio_channel

        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self._channel = open_aio_channel(address, TlsFiles(ca_file=tls_ca_file) if tls_ca_file else PLAINTEXT)
        self._stub = frontend_pb2_grpc.FrontendServiceStub(self._channel)
        # One session for every request: with the frontend's session dispatch they all go to one replica.
        self._session_id = session_id

    async def model(self) -> ServedModel:
        from infermesh.v1 import frontend_pb2

        info = (
            await self._stub.GetModelInfo(
                frontend_pb2.FrontendServiceGetModelInfoRequest(), timeout=30, metadata=self._metadata
            )
        ).model
        return ServedModel(info.model_name, info.vocab_size, info.max_model_len)

    async def send(self, request: BenchRequest) -> RequestResult:
        import grpc
        from infermesh.v1 import frontend_pb2

        sampling = frontend_pb2.ClientSamplingParams(
            temperature=0.0, max_tokens=request.max_tokens, ignore_eos=True
        )
        if request.text is not None:
            generate_input = frontend_pb2.GenerateInput(text=request.text, sampling=sampling)
        else:
            generate_input = frontend_pb2.GenerateInput(
                token_ids=frontend_pb2.TokenIds(ids=request.prompt), sampling=sampling
            )
        generate_input.session_id = self._session_id
        result = RequestResult(start=time.perf_counter(), prompt_tokens=len(request.prompt))
        try:
            call = self._stub.GenerateStream(
                frontend_pb2.GenerateStreamRequest(input=generate_input), metadata=self._metadata
            )
            async for message in call:
                if message.token_ids:
                    result.chunks.append((time.perf_counter(), len(message.token_ids)))
                if message.HasField("usage"):
                    result.prompt_tokens = message.usage.prompt_tokens
        except grpc.aio.AioRpcError as error:
            result.error = f"{error.code().name}: {error.details()}"
        result.end = time.perf_counter()
        return result

    async def close(self) -> None:
        await self._channel.close()


class OpenAIBackend:
    """POST /v1/completions (or /v1/chat/completions) with stream=true, as vLLM's bench client does.

    Tokens are counted from the server's usage (stream_options.include_usage) when it sends one,
    else one per content chunk.
    """

    def __init__(self, base_url: str, model: str | None, chat: bool, api_key: str | None) -> None:
        import aiohttp

        self._base = base_url.rstrip("/")
        if self._base.endswith("/v1"):
            self._base = self._base[: -len("/v1")]
        self._model = model
        self._chat = chat
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._session = aiohttp.ClientSession(
            headers=headers, timeout=aiohttp.ClientTimeout(total=None, sock_connect=30)
        )

    async def model(self) -> ServedModel:
        async with self._session.get(f"{self._base}/v1/models") as response:
            response.raise_for_status()
            body = await response.json()
        entries = body.get("data") or []
        if self._model is None:
            if not entries:
                raise ValueError(f"{self._base}/v1/models lists no model; pass --model")
            self._model = entries[0]["id"]
        entry = next((e for e in entries if e.get("id") == self._model), {})
        return ServedModel(self._model, 0, int(entry.get("max_model_len") or 0))

    async def send(self, request: BenchRequest) -> RequestResult:
        body: dict = {
            "model": self._model,
            "max_tokens": request.max_tokens,
            "temperature": 0.0,
            "stream": True,
            "stream_options": {"include_usage": True},
            "ignore_eos": True,
        }
        if self._chat:
            if request.text is None:
                raise ValueError('--backend openai-chat needs text prompts (a --dataset with "prompt")')
            body["messages"] = [{"role": "user", "content": request.text}]
            path = "/v1/chat/completions"
        else:
            body["prompt"] = request.text if request.text is not None else request.prompt
            path = "/v1/completions"
        result = RequestResult(start=time.perf_counter(), prompt_tokens=len(request.prompt))
        usage_tokens = None
        try:
            async with self._session.post(f"{self._base}{path}", json=body) as response:
                if response.status != 200:
                    result.error = f"HTTP {response.status}: {(await response.text())[:300]}"
                else:
                    async for event in _sse_events(response.content):
                        now = time.perf_counter()
                        for choice in event.get("choices") or []:
                            piece = (
                                choice.get("text")
                                if not self._chat
                                else (choice.get("delta") or {}).get("content")
                            )
                            if piece:
                                result.chunks.append((now, 1))
                        usage = event.get("usage")
                        if usage:
                            usage_tokens = usage.get("completion_tokens")
                            result.prompt_tokens = usage.get("prompt_tokens", result.prompt_tokens)
        except Exception as error:  # noqa: BLE001 - any transport failure is this request's error
            result.error = f"{type(error).__name__}: {error}"
        result.end = time.perf_counter()
        _spread_usage(result, usage_tokens)
        return result

    async def close(self) -> None:
        await self._session.close()


def _spread_usage(result: RequestResult, usage_tokens: int | None) -> None:
    """Makes the chunk counts add up to the server's token count (a chunk may hold several tokens)."""
    if not usage_tokens or not result.chunks or usage_tokens == result.output_tokens:
        return
    extra = usage_tokens - len(result.chunks)
    if extra >= 0:
        time_last, _ = result.chunks[-1]
        result.chunks[-1] = (time_last, 1 + extra)


async def _sse_events(content) -> AsyncIterator[dict]:
    """The JSON objects of a server-sent-event stream, up to `data: [DONE]`."""
    async for raw in content:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data:"):
            continue
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            return
        yield json.loads(data)


def make_backend(
    name: str,
    address: str,
    base_url: str,
    model: str | None,
    api_key: str | None,
    tls_ca_file: str = "",
    session_id: str = "",
) -> Backend:
    if name == "infermesh":
        return GrpcBackend(address, api_key, tls_ca_file, session_id)
    if session_id:
        raise ValueError("--session-id is sent by the infermesh backend only")
    return OpenAIBackend(base_url, model, chat=name == "openai-chat", api_key=api_key)

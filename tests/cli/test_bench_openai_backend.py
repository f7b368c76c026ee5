"""`infermesh bench --backend openai` against an OpenAI-compatible server with known timing.

The server streams one token every TOKEN_GAP_S after FIRST_TOKEN_S, so the report's TTFT and ITL
have known lower bounds; --save-result and --plot must write what they promise.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from aiohttp import web

FIRST_TOKEN_S = 0.05
TOKEN_GAP_S = 0.01


class FakeOpenAIServer:
    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "fake-model", "object": "model"}]})

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await asyncio.sleep(FIRST_TOKEN_S)
        for i in range(body["max_tokens"]):
            if i:
                await asyncio.sleep(TOKEN_GAP_S)
            chunk = {"choices": [{"index": 0, "text": f" t{i}"}]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        usage = {"prompt_tokens": 7, "completion_tokens": body["max_tokens"]}
        await response.write(
            f"data: {json.dumps({'choices': [], 'usage': usage})}\n\ndata: [DONE]\n\n".encode()
        )
        return response

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.add_routes([web.get("/v1/models", self._models), web.post("/v1/completions", self._completions)])
        runner = web.AppRunner(app)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())

    def __enter__(self) -> FakeOpenAIServer:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "infermesh_cli", "bench", "--backend", "openai", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def fake_server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as server:
        yield server


def test_openai_backend_reports_saves_and_plots(fake_server: FakeOpenAIServer, tmp_path) -> None:
    dataset = tmp_path / "prompts.jsonl"
    dataset.write_text(
        "".join(json.dumps({"prompt": f"question {i}", "output_len": 4}) + "\n" for i in range(6))
    )
    saved, plot = tmp_path / "result.json", tmp_path / "plot.png"
    args = ["--base-url", f"http://127.0.0.1:{fake_server.port}/v1", "--dataset", str(dataset)]
    args += ["--request-rate", "40", "--concurrency", "3", "--goodput", "ttft:10000"]
    result = _bench(*args, "--save-result", str(saved), "--plot", str(plot))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert (report["completed"], report["failed"], report["output_tokens"]) == (6, 0, 24)
    assert report["prompt_tokens"] == 42  # the server's usage, not a client-side guess
    assert report["model"] == "fake-model" and report["request_rate"] == 40
    assert report["ttft_ms_p50"] >= FIRST_TOKEN_S * 1000
    assert report["itl_ms_p50"] >= TOKEN_GAP_S * 1000
    assert report["goodput_requests"] == 6
    assert "Serving Benchmark Result" in result.stderr and "P90 TTFT (ms)" in result.stderr
    sent = fake_server.bodies[0]
    assert sent["stream"] is True and sent["model"] == "fake-model" and sent["prompt"].startswith("question")

    detail = json.loads(saved.read_text())
    assert detail["completed"] == 6 and len(detail["requests"]) == 6
    assert all(len(r["itls_ms"]) == 3 and r["ttft_ms"] > 0 for r in detail["requests"])
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unreachable_server_is_a_clear_error(tmp_path) -> None:
    from tests.free_port import free_port

    result = _bench("--base-url", f"http://127.0.0.1:{free_port()}", "--disable-tqdm")
    assert result.returncode != 0
    assert "cannot ask" in result.stderr and "Traceback" not in result.stderr

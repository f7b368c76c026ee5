"""The HTTP connection guard in front of aiohttp: the connection cap answers 503 at once, a
connection whose headers do not arrive in time is closed, and a complete request is served."""

from __future__ import annotations

import asyncio

from aiohttp import web
from infermesh_frontend.openai_http.connection_guard import ConnectionGuard, HttpLimits


async def _serve(limits: HttpLimits):
    app = web.Application()

    async def hello(_request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app.add_routes([web.get("/hello", hello)])
    runner = web.AppRunner(app, keepalive_timeout=limits.keepalive_timeout_s)
    await runner.setup()
    guard = ConnectionGuard(runner.server, limits)
    server = await asyncio.get_running_loop().create_server(guard, "127.0.0.1", 0)
    return runner, server, guard, server.sockets[0].getsockname()[1]


async def _read_all(reader: asyncio.StreamReader, timeout_s: float) -> bytes:
    return await asyncio.wait_for(reader.read(), timeout_s)


def test_cap_header_deadline_and_normal_requests() -> None:
    async def scenario() -> None:
        limits = HttpLimits(max_connections=2, header_timeout_s=0.5, keepalive_timeout_s=5)
        runner, server, guard, port = await _serve(limits)
        try:
            half_open = []
            for _ in range(2):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"GET /hello HTTP/1.1\r\nHost: x\r\n")  # headers never finish
                half_open.append((reader, writer))
            await asyncio.sleep(0.05)
            # Over the cap: 503 at once, with Retry-After, and the connection is closed.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            refused = await _read_all(reader, 2)
            writer.close()
            assert refused.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in refused
            assert guard.refused == 1
            # The half-open ones are closed by the header deadline, which frees the slots.
            for reader, writer in half_open:
                assert await _read_all(reader, 3) == b""
                writer.close()
            assert guard.expired == 2
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            served = await _read_all(reader, 3)
            writer.close()
            assert served.startswith(b"HTTP/1.1 200") and b'{"ok": true}' in served
        finally:
            server.close()
            await runner.cleanup()

    asyncio.run(scenario())

"""GET /metrics on the API port, as vLLM serves it: the frontend's registry in Prometheus text.

The same registry the metrics port serves (every series labelled service="frontend"), so a
scraper that only knows the API address sees what the metrics port shows. Behind the API key
when keys are on, like the API's other routes.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


def metrics_routes(registry: CollectorRegistry) -> list[web.RouteDef]:
    async def metrics(request: web.Request) -> web.Response:
        # Rendering walks every collector: a few ms for ours, off the event loop all the same.
        body = await request.loop.run_in_executor(None, generate_latest, registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return [web.get("/metrics", metrics)]

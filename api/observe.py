"""Request latency for Prometheus, labelled by route template (bounded), method and status."""

from __future__ import annotations

import time

from starlette.types import Message, Receive, Scope, Send

from flatmtl.api.middleware import HttpMiddleware
from flatmtl.service.telemetry.collector import TELEMETRY

UNMATCHED = "unmatched"


class RequestTimer(HttpMiddleware):
    """ASGI middleware: times each HTTP request; the router leaves the matched route in the scope."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        status = 500
        began = time.perf_counter()

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = getattr(scope.get("route"), "path", UNMATCHED)
            TELEMETRY.observe_request(route, scope["method"], status, time.perf_counter() - began)

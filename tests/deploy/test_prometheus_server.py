"""A real Prometheus scrapes the telemetry registry and answers every dashboard and alert expression."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from service.telemetry import CONTENT_TYPE_LATEST, Telemetry
from tests.deploy.prometheus_server import check_every_expression
from tests.deploy.samples import growing_telemetry


def _serve(metrics: Telemetry) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/metrics":
                self.send_error(404)
                return
            body = metrics.render()
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Keep the test output quiet."""

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


@pytest.fixture
def metrics_target() -> Iterator[str]:
    """host:port of a stdlib server rendering a registry that grows one step per scrape."""
    server = _serve(growing_telemetry())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.timeout(60)
def test_every_dashboard_and_alert_expression_answers(metrics_target: str, tmp_path: Path) -> None:
    check_every_expression(metrics_target, tmp_path)

"""Prometheus metrics shared by every service, and the /metrics, /healthz, /readyz endpoint.

Metric names follow Prometheus conventions: ``entrain_`` prefix, base units,
``_total`` for counters, ``_seconds`` for durations.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from kit.settings import ServiceSettings

RECORDS_CONSUMED = Counter(
    "entrain_records_consumed_total", "Records taken from a topic and handled (including dead-lettered).",
    ["service", "topic"])
RECORDS_PRODUCED = Counter(
    "entrain_records_produced_total", "Records the broker acknowledged.", ["service", "topic"])
PRODUCE_ERRORS = Counter(
    "entrain_produce_errors_total", "Records the broker did not acknowledge (delivery failed).", ["service", "topic"])
RECORDS_DEAD_LETTERED = Counter(
    "entrain_records_dead_lettered_total", "Records sent to a DLQ, by reason class.", ["service", "topic", "reason"])
RECORDS_SUPERSEDED = Counter(
    "entrain_records_superseded_total",
    "Held records not served because a newer version of the same position arrived (kit.deadlines).",
    ["service", "topic"])
CONSUMER_REJOINS = Counter("entrain_consumer_rejoins_total",
                           "Consumers replaced after librdkafka failed them for good (fenced).", ["service"])
RECORDS_HELD = Gauge("entrain_records_held", "Records held to be served earliest deadline first.", ["service"])
PROCESSING_SECONDS = Histogram(
    "entrain_processing_seconds", "Time to handle one consumed record.", ["service", "topic"],
    buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0))
CONSUMER_LAG = Gauge(
    "entrain_consumer_lag_records", "Records between the consumer's position and the partition's high watermark.",
    ["service", "topic", "partition"])


Check = Callable[[], bool]


class HealthServer:
    """Serves /metrics, /healthz (process alive) and /readyz (every readiness check passes).

    Runs in a daemon thread so it never blocks the consumer loop.
    """

    def __init__(self, host: str, port: int, registry: CollectorRegistry = REGISTRY) -> None:
        self._ready_checks: dict[str, Check] = {}
        checks = self._ready_checks

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._send(200, b'{"status":"ok"}\n', "application/json")
                elif path == "/readyz":
                    failing = [name for name, check in checks.items() if not _safe(check)]
                    body = json.dumps({"status": "ready"} if not failing else
                                      {"status": "not ready", "failing": failing}, separators=(",", ":"))
                    self._send(200 if not failing else 503, (body + "\n").encode(), "application/json")
                else:
                    self._send(404, b'{"error":"not found"}\n', "application/json")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # scrapes are not log-worthy
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="health-http", daemon=True)

    @classmethod
    def for_service(cls, settings: ServiceSettings) -> HealthServer:
        """The endpoint at the service's configured host and port (ENTRAIN_METRICS_HOST,
        ENTRAIN_<SERVICE>_METRICS_PORT)."""
        return cls(settings.metrics_host, settings.metrics_port)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def add_ready_check(self, name: str, check: Check) -> None:
        self._ready_checks[name] = check

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _safe(check: Check) -> bool:
    try:
        return bool(check())
    except Exception:
        return False

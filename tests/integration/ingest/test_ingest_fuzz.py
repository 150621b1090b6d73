"""Schema-driven fuzzing of ingest and delivery from their own OpenAPI documents, with every
check schemathesis has enabled by default: no input makes them answer 5xx or break their
documented contract (status codes, content types, headers, response schemas, schema-valid
requests accepted, schema-invalid ones rejected, 405 with Allow, auth honoured)."""

from __future__ import annotations

from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, given, settings
from starlette.applications import Starlette
from tests.auth_helpers import VERIFIER, bearer, token_for
from tests.integration.ingest.test_ingest_api import ADMIN_KEY, ALICE, APP, SETTINGS

from delivery.app import SegmentFeed
from delivery.app import create_app as create_delivery
from delivery.export import Exporter
from delivery.playlists import Playlists
from ingest.app import create_app
from kit.ratelimit import RateLimiter
from kit.settings import KafkaSettings
from kit.store import FileStore


def fuzz_all(app: Starlette, credentials: dict[str, dict[str, str]], default: dict[str, str],
             must_cover: set[str]) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert must_cover <= {operation.label for operation in operations}
    for operation in operations:
        fuzz(operation, credentials.get(operation.label, default))


def fuzz(operation: schemathesis.APIOperation, headers: dict[str, str]) -> None:
    @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(headers=headers)  # no checks= : every check enabled by default

    check()


def test_no_generated_request_breaks_ingest_s_contract(isolated: KafkaSettings) -> None:
    fuzz_all(create_app(SETTINGS, isolated),
             {"POST /v1/tokens": APP, "PUT /v1/rights-holders/{rights_holder_id}/consent":
              {"Authorization": f"Bearer {ADMIN_KEY}"}}, ALICE,
             {"POST /v1/telemetry", "POST /v1/plays", "PUT /v1/rights-holders/{rights_holder_id}/consent",
              "POST /v1/tokens", "POST /v1/erasures"})


def test_no_generated_request_breaks_delivery_s_contract(isolated: KafkaSettings, tmp_path: Path) -> None:
    from kit.auth import Pseudonymizer

    pseudonymizer = Pseudonymizer(b"p" * 32)
    feed = SegmentFeed(isolated, Playlists(), lookback_s=1).start()
    try:
        exporter = Exporter(isolated, isolated.topic("soundtrack-listeners-changelog"))  # no worker: no state
        app = create_delivery(VERIFIER, pseudonymizer, feed, FileStore(tmp_path), limiter=RateLimiter(1e6, 1e6),
                              exporter=exporter, export_limiter=RateLimiter(1e6, 1e6))
        fuzz_all(app, {}, bearer(token_for(pseudonymizer, "fuzzer")),
                 {"GET /v1/playlist", "GET /v1/playlist.m3u8", "GET /v1/audio/{sha256}.{extension}",
                  "POST /v1/underruns", "GET /v1/me/export"})
    finally:
        feed.stop()

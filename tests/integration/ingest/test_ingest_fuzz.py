"""Schema-driven fuzzing of ingest from its own OpenAPI document: no input makes it answer 5xx
or break its documented contract (status codes, content types, response schemas)."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from tests.integration.ingest.test_ingest_api import ADMIN_KEY, ALICE, APP, SETTINGS

from ingest.app import create_app
from kit.settings import KafkaSettings

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def test_no_generated_request_breaks_the_contract(isolated: KafkaSettings) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(SETTINGS, isolated))
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {operation.label for operation in operations}
    assert {"POST /v1/telemetry", "POST /v1/plays", "PUT /v1/rights-holders/{rights_holder_id}/consent",
            "POST /v1/tokens", "POST /v1/erasures"} <= labels
    credentials = {"POST /v1/tokens": APP, "PUT /v1/rights-holders/{rights_holder_id}/consent":
                   {"Authorization": f"Bearer {ADMIN_KEY}"}}
    for operation in operations:
        fuzz(operation, credentials.get(operation.label, ALICE))


def fuzz(operation: schemathesis.APIOperation, headers: dict[str, str]) -> None:
    @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(headers=headers, checks=CHECKS)

    check()

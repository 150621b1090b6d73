from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import replace

import pytest

from kit.settings import KafkaSettings


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Figures a test measured (``record_property("figures", {...})``), printed at the end of the
    run, `pytest -q` included: the listener page's audible response, for one."""
    for report in terminalreporter.getreports("passed") + terminalreporter.getreports("failed"):
        for name, value in getattr(report, "user_properties", []):
            if name == "figures" and report.when == "call":
                terminalreporter.write_line(f"FIGURES {report.nodeid.split('::')[-1]} {json.dumps(value)}")


@pytest.fixture(scope="session")
def kafka() -> KafkaSettings:
    """Settings for the real broker `make test` started; fails (never skips) when it is away."""
    from confluent_kafka.admin import AdminClient

    settings = KafkaSettings.from_env()
    try:
        AdminClient(settings.client_config()).list_topics(timeout=10)
    except Exception as exc:
        pytest.fail(f"Kafka at {settings.bootstrap_servers} does not answer ({exc}); run `make up` first")
    return settings


@pytest.fixture
def isolated(kafka: KafkaSettings) -> Iterator[KafkaSettings]:
    """The same cluster with a topic prefix unique to this test, every topic created; the
    topics (and any a service made under the prefix) are deleted afterwards."""
    from kit.topics import delete_prefixed_topics, ensure_topics

    settings = replace(kafka, topic_prefix=f"test-{uuid.uuid4().hex[:8]}.")
    ensure_topics(settings)
    yield settings
    delete_prefixed_topics(settings)

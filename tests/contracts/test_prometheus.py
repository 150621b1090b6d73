"""The Prometheus scrape config and alert rules pass promtool, the rules' unit tests pass, and
every metric the services expose passes `promtool check metrics` (naming conventions)."""

from __future__ import annotations

import shutil
import subprocess

from prometheus_client import REGISTRY, generate_latest

from kit.settings import REPO_ROOT

PROMETHEUS = REPO_ROOT / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")


def promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    assert PROMTOOL, "promtool is missing: `make venv` installs Debian's prometheus package"
    return subprocess.run([PROMTOOL, *args], input=stdin, capture_output=True, cwd=PROMETHEUS, check=False)


def test_the_scrape_config_and_rules_are_valid() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_the_alert_rules_pass_their_unit_tests() -> None:
    result = promtool("test", "rules", "rules/entrain.rules.test.yml")
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_every_service_metric_follows_prometheus_conventions() -> None:
    import delivery.app  # noqa: F401
    import inference.service  # noqa: F401
    import ingest.app  # noqa: F401  (importing registers each service's metrics)
    import royalty.service  # noqa: F401
    import watermark.service  # noqa: F401

    exposition = generate_latest(REGISTRY)
    families = {line.split()[2] for line in exposition.decode().splitlines() if line.startswith("# TYPE")}
    assert {"entrain_ingest_requests_total", "entrain_royalty_transactions_total",
            "entrain_inference_deadline_misses_total", "entrain_soundtrack_requests_total",
            "entrain_records_dead_lettered_total", "entrain_consumer_lag_records",
            "entrain_watermark_verification_failures_total", "entrain_watermark_embed_seconds",
            "entrain_soundtrack_buffer_underruns_total"} <= families
    result = promtool("check", "metrics", stdin=exposition)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout.decode() + result.stderr.decode()

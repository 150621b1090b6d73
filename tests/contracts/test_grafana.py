"""The provisioned Grafana dashboards are valid JSON whose queries use real Entrain metrics."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from kit.settings import REPO_ROOT

GRAFANA = REPO_ROOT / "deploy" / "grafana"
KNOWN = re.compile(r"entrain_[a-z_]+")


def test_dashboards_are_valid_and_query_known_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    from prometheus_client import REGISTRY

    monkeypatch.setenv("ENTRAIN_KAFKA_REPLICATION_FACTOR", "1")  # the worker need not ask a cluster
    monkeypatch.setenv("ENTRAIN_KAFKA_MIN_INSYNC_REPLICAS", "1")

    import delivery.app  # noqa: F401
    import inference.service  # noqa: F401
    import ingest.app  # noqa: F401  (registers the services' metrics)
    import royalty.service  # noqa: F401
    import soundtrack.app  # noqa: F401
    import watermark.service  # noqa: F401

    exposed = {sample.name for family in REGISTRY.collect() for sample in family.samples} | {
        family.name for family in REGISTRY.collect()}
    dashboards = sorted((GRAFANA / "dashboards").glob("*.json"))
    assert dashboards
    for path in dashboards:
        dashboard = json.loads(path.read_text())
        assert dashboard["uid"] and dashboard["title"] and dashboard["panels"]
        ids = [panel["id"] for panel in dashboard["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                for metric in KNOWN.findall(target["expr"]):
                    base = re.sub(r"_(bucket|sum|count)$", "", metric)
                    known = {metric, base, base + "_total", base.removesuffix("_total")} & exposed
                    assert known, f"{path.name}: {panel['title']}: unknown metric {metric}"


def test_provisioning_files_parse() -> None:
    for path in (GRAFANA / "provisioning").rglob("*.yml"):
        assert yaml.safe_load(path.read_text())["apiVersion"] == 1

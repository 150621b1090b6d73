"""Deployment files validate offline: the compose file parses with docker-compose, the generated
Kubernetes manifests are current, core resources pass the Kubernetes schemas, and the custom
resources (Strimzi KafkaTopic, KEDA ScaledObject: no schemas offline) match the topic contracts."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys

import kubernetes_validate
import pytest
import yaml

from kit.contracts import load_contracts
from kit.settings import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
spec = importlib.util.spec_from_file_location("k8s_generate", DEPLOY / "k8s" / "generate.py")
assert spec is not None and spec.loader is not None
generate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(generate)


def test_the_compose_file_is_valid_and_builds_existing_targets() -> None:
    tool = shutil.which("docker-compose")
    assert tool, "docker-compose is missing: `make venv` installs Debian's docker-compose package"
    env = {**os.environ, "ENTRAIN_API_KEYS": "[]", "ENTRAIN_PSEUDONYM_SECRET": "x", "ENTRAIN_WATERMARK_KEYS": "k=00",
           "ENTRAIN_TOKEN_SIGNING_KEYS": "{}", "ENTRAIN_TOKEN_PUBLIC_KEYS": "{}",
           "SEGMENT_STORE_ACCESS_KEY_ID": "id", "SEGMENT_STORE_SECRET_ACCESS_KEY": "secret"}
    result = subprocess.run([tool, "-p", "entrain", "-f", "compose.yaml", "config"], cwd=DEPLOY, env=env,
                            capture_output=True, check=False)
    assert result.returncode == 0, result.stderr.decode()
    resolved = yaml.safe_load(result.stdout)["services"]
    for name, service in resolved.items():  # segment audio: in the S3 server, only for those that use it
        environment = service.get("environment") or {}
        uses_store = name in ("delivery", "inference", "retrainer", "watermark")
        assert (environment.get("ENTRAIN_SEGMENT_STORE") == "s3://entrain-segments/segments") == uses_store, name
        assert ("AWS_SECRET_ACCESS_KEY" in environment) == uses_store, name
        if uses_store:
            assert environment["AWS_ENDPOINT_URL"] == "http://s3:80" and not service.get("volumes"), name
    assert resolved["s3"]["environment"]["S3PROXY_CREDENTIAL"] == "secret"
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    targets = set(re.findall(r"^FROM \S+ AS (\S+)$", (DEPLOY / "Dockerfile").read_text(), re.MULTILINE))
    for name, service in compose["services"].items():
        target = (service.get("build") or {}).get("target")
        assert target is None or target in targets, f"{name} builds missing target {target}"


def test_the_generated_kubernetes_manifests_are_current() -> None:
    for name, text in generate.render().items():
        assert (DEPLOY / "k8s" / "generated" / name).read_text() == text, (
            f"{name} is stale: run python deploy/k8s/generate.py")


def test_core_resources_pass_the_kubernetes_schemas() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "k8s" / "generated" / "services.yaml").read_text()))
    assert {d["kind"] for d in docs} == {"Deployment", "StatefulSet", "Service", "ConfigMap"}
    for doc in docs:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
    # segment audio: the bucket for the services that use it (and only them), its keys from a Secret
    env = {d["metadata"]["name"]: {e["name"]: e for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}
           for d in docs if d["kind"] in ("Deployment", "StatefulSet")}
    (store,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert store["data"]["url"].startswith("s3://")
    for name, variables in env.items():
        uses = name in ("delivery", "inference", "retrainer", "watermark")
        assert ("ENTRAIN_SEGMENT_STORE" in variables) == uses == ("AWS_SECRET_ACCESS_KEY" in variables), name
        if uses:
            assert variables["ENTRAIN_SEGMENT_STORE"]["valueFrom"]["configMapKeyRef"]["name"] == "segment-store"
            secret = variables["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]
            assert secret["name"] == "segment-store-credentials"


def test_custom_resources_follow_the_contracts() -> None:
    contracts = load_contracts()
    topics = {d["spec"]["topicName"]: d["spec"] for d in
              yaml.safe_load_all((DEPLOY / "k8s" / "generated" / "topics.yaml").read_text())}
    for contract in contracts.values():
        assert topics[contract.name]["partitions"] == contract.partitions
        assert topics[contract.name]["config"]["retention.ms"] == str(contract.retention_ms)
        assert topics[contract.name]["config"]["cleanup.policy"] == contract.cleanup_policy
        assert (contract.dlq_name in topics) == contract.dlq
    for scaled in yaml.safe_load_all((DEPLOY / "k8s" / "generated" / "autoscaling.yaml").read_text()):
        trigger = scaled["spec"]["triggers"][0]["metadata"]
        assert scaled["spec"]["maxReplicaCount"] == contracts[trigger["topic"]].partitions


def test_every_authenticating_service_gets_its_credentials_everywhere_it_is_deployed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """ingest and watermark (its detection API) check API keys, ingest signs listener tokens and
    delivery verifies them: `make up`, compose and Kubernetes must all hand them what they check."""
    monkeypatch.syspath_prepend(str(DEPLOY / "local"))  # services.py imports its neighbour processes.py, as when run
    local_spec = importlib.util.spec_from_file_location("local_services", DEPLOY / "local" / "services.py")
    assert local_spec is not None and local_spec.loader is not None
    local = importlib.util.module_from_spec(local_spec)
    sys.modules["local_services"] = local  # its dataclasses look their module up
    local_spec.loader.exec_module(local)
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    pods = {d["metadata"]["name"]: d["spec"]["template"]["spec"]["containers"][0]["env"]
            for d in generate.workloads() if d["kind"] in ("Deployment", "StatefulSet")}
    needs = {"ingest": ("ENTRAIN_API_KEYS", "ENTRAIN_TOKEN_SIGNING_KEYS", "ENTRAIN_PSEUDONYM_SECRET"),
             "watermark": ("ENTRAIN_API_KEYS",),
             "delivery": ("ENTRAIN_TOKEN_PUBLIC_KEYS", "ENTRAIN_PSEUDONYM_SECRET")}
    for name, variables in needs.items():
        for variable in variables:
            assert f"{variable}_FILE" in local.services()[name].env, f"make up: {name} {variable}"
            assert variable in (compose[name].get("environment") or {}), f"compose: {name} {variable}"
            assert any(e["name"] == f"{variable}_FILE" for e in pods[name]), f"kubernetes: {name} {variable}"
    assert "ENTRAIN_TOKEN_SIGNING_KEYS" not in (compose["delivery"].get("environment") or {})  # verifiers: public only


def test_the_registry_and_the_cluster_settings_reach_every_deployed_service() -> None:
    """Compose and Kubernetes run Apicurio's own image; every service is told the registry URL;
    in Kubernetes every service also gets the replication settings (Faust's topics too) and
    Strimzi's cluster CA for its SASL_SSL connection."""
    registry_docs = list(yaml.safe_load_all((DEPLOY / "k8s" / "generated" / "registry.yaml").read_text()))
    assert {d["kind"] for d in registry_docs} == {"Deployment", "Service", "Job"}
    for doc in registry_docs:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
    [deployment] = [d for d in registry_docs if d["kind"] == "Deployment"]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"].startswith("apicurio/apicurio-registry:")
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    assert compose["registry"]["image"].startswith("apicurio/apicurio-registry:")
    for name in generate.SERVICES:
        assert compose[name]["environment"]["ENTRAIN_SCHEMA_REGISTRY_URL"].endswith("/apis/ccompat/v7"), name
    for doc in generate.workloads():
        if doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        env = {e["name"]: e.get("value") for e in doc["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["ENTRAIN_SCHEMA_REGISTRY_URL"] == generate.REGISTRY_URL
        assert env["ENTRAIN_KAFKA_REPLICATION_FACTOR"] == "3" and env["ENTRAIN_KAFKA_MIN_INSYNC_REPLICAS"] == "2"
        assert env["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL" and env["KAFKA_SSL_CA_LOCATION"] == "/kafka-ca/ca.crt"

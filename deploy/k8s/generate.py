"""Generate the Kubernetes manifests from the topic contracts and the service list.

    python deploy/k8s/generate.py          # rewrites deploy/k8s/generated/*.yaml
    python deploy/k8s/generate.py --check  # exit 1 if the committed files are stale

topics.yaml     Strimzi KafkaTopic per topic and DLQ (partitions, retention, cleanup from schemas/)
services.yaml   Deployment + Service per Entrain service (probes on /healthz and /readyz)
autoscaling.yaml  KEDA ScaledObjects scaling consumers on consumer-group lag (never above
                the partition count: more instances than partitions would idle)
users.yaml      Strimzi KafkaUser per principal: SCRAM-SHA-512 and the least-privilege ACLs of
                kit.acls (Strimzi puts each password in a Secret named like the user)
registry.yaml   Apicurio Registry 3.3.3 (Deployment + Service; SQL storage on your PostgreSQL,
                from the Secret ``registry-db``) and the Job that registers every committed schema

The services that read or write segment audio (delivery, inference, retrainer, watermark) find the
S3 bucket in the ConfigMap ``segment-store`` (in services.yaml: ``url`` s3://bucket/prefix,
``region``, and an optional ``endpoint`` for S3-compatible servers) and its keys in the optional
Secret ``segment-store-credentials`` (``access-key-id``, ``secret-access-key``); without that
Secret the S3 client uses the pod's own identity (docs/media.md).

Every service reaches the cluster over SASL_SSL (SCRAM-SHA-512) trusting Strimzi's cluster CA,
creates what it creates with replication factor 3 and min.insync.replicas 2, and finds its
schemas at the registry (basic auth from the optional Secret ``registry-client``, key user-info).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from kit.acls import acls
from kit.contracts import load_contracts
from kit.settings import KafkaSettings
from kit.topics import DLQ_RETENTION_MS

OUT = Path(__file__).with_name("generated")
RESOURCE_TYPES = {"TOPIC": "topic", "GROUP": "group", "TRANSACTIONAL_ID": "transactionalId", "BROKER": "cluster"}
NAMESPACE = "entrain"
CLUSTER = "entrain"
IMAGE = "ghcr.io/entrain/{service}:latest"
REGISTRY_IMAGE = "apicurio/apicurio-registry:3.3.3"  # Apicurio's own image
REGISTRY_URL = "http://registry:8080/apis/ccompat/v7"
REPLICATION = {"ENTRAIN_KAFKA_REPLICATION_FACTOR": "3", "ENTRAIN_KAFKA_MIN_INSYNC_REPLICAS": "2"}
# service -> (port, consumer group, topic it scales on, replicas, cpu, memory, extra env)
SERVICES: dict[str, dict[str, Any]] = {
    "ingest": {"port": 8080, "replicas": 2, "cpu": "1", "memory": "512Mi"},
    "soundtrack": {"port": 9102, "group": "soundtrack", "topic": "listener.telemetry.v1", "replicas": 2,
                   "cpu": "1", "memory": "1Gi"},
    "delivery": {"port": 8085, "replicas": 2, "cpu": "500m", "memory": "512Mi"},
    "inference": {"port": 9103, "group": "inference", "topic": "soundtrack.requests.v1", "replicas": 2,
                  "cpu": "1", "memory": "2Gi"},
    "retrainer": {"port": 9106, "replicas": 1, "cpu": "2", "memory": "2Gi"},  # trains when training consent ends
    "watermark": {"port": 9104, "group": "watermark", "topic": "soundtrack.segments.generated.v1", "replicas": 2,
                  "cpu": "1", "memory": "1Gi"},
    "royalty": {"port": 9105, "group": "royalty", "topic": "listener.plays.v1", "replicas": 1,
                "cpu": "1", "memory": "1Gi"},
}


def kafka_topics() -> list[dict[str, Any]]:
    docs = []
    for contract in load_contracts().values():
        entries = [(contract.name, contract.partitions, contract.topic_config())]
        if contract.dlq:
            entries.append((contract.dlq_name, 1, {"retention.ms": str(DLQ_RETENTION_MS), "cleanup.policy": "delete"}))
        for name, partitions, config in entries:
            docs.append({
                "apiVersion": "kafka.strimzi.io/v1beta2", "kind": "KafkaTopic",
                "metadata": {"name": name.replace(".", "-"), "namespace": NAMESPACE,
                             "labels": {"strimzi.io/cluster": CLUSTER}},
                "spec": {"topicName": name, "partitions": partitions, "replicas": 3,
                         "config": {**config, "min.insync.replicas": "2"}},
            })
    return docs


CA_MOUNT = [{"name": "kafka-ca", "mountPath": "/kafka-ca", "readOnly": True}]
CA_VOLUME = [{"name": "kafka-ca", "secret": {"secretName": f"{CLUSTER}-cluster-ca-cert"}}]  # Strimzi's cluster CA


STORE_USERS = ("delivery", "inference", "retrainer", "watermark")
STORE_CONFIG = {"url": "s3://entrain-segments/segments", "region": "us-east-1"}


def store_env() -> list[dict[str, Any]]:
    """Where segment audio lives (kit.store): the bucket from a ConfigMap, keys from an optional Secret."""
    def config(name: str, key: str, optional: bool = False) -> dict[str, Any]:
        ref: dict[str, Any] = {"name": "segment-store", "key": key, **({"optional": True} if optional else {})}
        return {"name": name, "valueFrom": {"configMapKeyRef": ref}}

    def secret(name: str, key: str) -> dict[str, Any]:
        return {"name": name, "valueFrom": {"secretKeyRef": {"name": "segment-store-credentials", "key": key,
                                                              "optional": True}}}
    return [config("ENTRAIN_SEGMENT_STORE", "url"), config("AWS_REGION", "region"),
            config("AWS_ENDPOINT_URL", "endpoint", optional=True),
            secret("AWS_ACCESS_KEY_ID", "access-key-id"), secret("AWS_SECRET_ACCESS_KEY", "secret-access-key")]


def client_env(user: str) -> list[dict[str, Any]]:
    """How a pod reaches Kafka (as ``user``, its KafkaUser) and the schema registry."""
    return [{"name": "KAFKA_BOOTSTRAP_SERVERS", "value": f"{CLUSTER}-kafka-bootstrap:9093"},
            {"name": "KAFKA_SECURITY_PROTOCOL", "value": "SASL_SSL"},
            {"name": "KAFKA_SSL_CA_LOCATION", "value": "/kafka-ca/ca.crt"},
            {"name": "KAFKA_SASL_USERNAME", "value": user},
            {"name": "KAFKA_SASL_PASSWORD",
             "valueFrom": {"secretKeyRef": {"name": user, "key": "password"}}},  # from its KafkaUser
            {"name": "ENTRAIN_SCHEMA_REGISTRY_URL", "value": REGISTRY_URL},
            {"name": "ENTRAIN_SCHEMA_REGISTRY_USER_INFO",
             "valueFrom": {"secretKeyRef": {"name": "registry-client", "key": "user-info", "optional": True}}}] + [
            {"name": k, "value": v} for k, v in REPLICATION.items()]


def registry() -> list[dict[str, Any]]:
    """Apicurio Registry on PostgreSQL (its production storage), and the schema registration Job."""
    labels = {"app.kubernetes.io/name": "registry", "app.kubernetes.io/part-of": "entrain"}
    db = [{"name": f"APICURIO_DATASOURCE_{key.upper()}",
           "valueFrom": {"secretKeyRef": {"name": "registry-db", "key": key}}} for key in ("url", "username", "password")]
    container = {
        "name": "registry", "image": REGISTRY_IMAGE,
        "env": [{"name": "APICURIO_STORAGE_KIND", "value": "sql"},
                {"name": "APICURIO_STORAGE_SQL_KIND", "value": "postgresql"}, *db],
        "ports": [{"name": "http", "containerPort": 8080}, {"name": "management", "containerPort": 9000}],
        "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "768Mi"}},
        "livenessProbe": {"httpGet": {"path": "/health/live", "port": "management"}, "periodSeconds": 10},
        "readinessProbe": {"httpGet": {"path": "/health/ready", "port": "management"}, "periodSeconds": 5},
        "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False},
    }
    job_container = {
        "name": "register-schemas", "image": IMAGE.format(service="topics"),
        "command": ["python", "-m", "kit.topics", "--schemas-only"],  # topics themselves are KafkaTopics
        "env": [e for e in client_env("topics") if e["name"].startswith("ENTRAIN_SCHEMA")],
        "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False},
    }
    return [
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": "registry", "namespace": NAMESPACE, "labels": labels},
         "spec": {"replicas": 2, "selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "registry", "namespace": NAMESPACE,
                                                             "labels": labels},
         "spec": {"selector": labels, "ports": [{"name": "http", "port": 8080, "targetPort": "http"}]}},
        {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "register-schemas", "namespace": NAMESPACE},
         "spec": {"backoffLimit": 10, "template": {"spec": {"restartPolicy": "OnFailure",
                                                           "containers": [job_container]}}}},
    ]


def workloads() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = [{
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "segment-store", "namespace": NAMESPACE},
        "data": dict(STORE_CONFIG)}]  # add `endpoint` for an S3-compatible server other than AWS
    for name, spec in SERVICES.items():
        labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "entrain"}
        env = client_env(name) + [
               {"name": "ENTRAIN_METRICS_HOST", "value": "0.0.0.0"},  # noqa: S104 (in a pod, on purpose)
               {"name": "ENTRAIN_ENV", "value": "production"},  # no plaintext Kafka, no development secrets
               {"name": "ENTRAIN_INSTANCE_ID",  # static group membership: a restarted container rejoins at once
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
        if name in ("ingest", "delivery"):
            env += [{"name": f"ENTRAIN_{name.upper()}_HOST", "value": "0.0.0.0"},  # noqa: S104
                    {"name": "ENTRAIN_PSEUDONYM_SECRET_FILE", "value": "/secrets/pseudonym.secret"}]
        if name == "ingest":  # it mints listener tokens for app backends
            env += [{"name": "ENTRAIN_API_KEYS_FILE", "value": "/secrets/api-keys.json"},
                    {"name": "ENTRAIN_TOKEN_SIGNING_KEYS_FILE", "value": "/secrets/token-signing.jwks"}]
        if name == "delivery":  # it verifies listener tokens only
            env.append({"name": "ENTRAIN_TOKEN_PUBLIC_KEYS_FILE", "value": "/secrets/token-public.jwks"})
        if name == "watermark":
            env += [{"name": "ENTRAIN_WATERMARK_KEYS_FILE", "value": "/secrets/watermark-keys.json"},
                    {"name": "ENTRAIN_API_KEYS_FILE", "value": "/secrets/api-keys.json"}]  # the detection API
        if name in STORE_USERS:
            env += store_env()
        if name == "royalty":  # a stable transactional id per replica
            env.append({"name": "ENTRAIN_ROYALTY_INSTANCE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
        container: dict[str, Any] = {
            "name": name, "image": IMAGE.format(service=name), "env": env,
            "ports": [{"name": "http", "containerPort": spec["port"]}],
            "resources": {"requests": {"cpu": spec["cpu"], "memory": spec["memory"]},
                          "limits": {"memory": spec["memory"]}},
            "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10},
            "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5},
            "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": False},
        }
        pod: dict[str, Any] = {"containers": [container]}
        container["volumeMounts"], pod["volumes"] = list(CA_MOUNT), list(CA_VOLUME)
        if name in ("ingest", "delivery", "watermark"):
            container["volumeMounts"].append({"name": "secrets", "mountPath": "/secrets", "readOnly": True})
            pod["volumes"].append({"name": "secrets", "secret": {"secretName": f"{name}-secrets"}})
        if name == "watermark":
            container["ports"].append({"name": "detect", "containerPort": 8084})
        kind = "StatefulSet" if name == "royalty" else "Deployment"
        workload: dict[str, Any] = {
            "apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels},
            "spec": {"replicas": spec["replicas"], "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels,
                                               "annotations": {"prometheus.io/scrape": "true",
                                                               "prometheus.io/port": str(spec["port"])}},
                                  "spec": pod}},
        }
        if kind == "StatefulSet":
            workload["spec"]["serviceName"] = name
        docs.append(workload)
        docs.append({"apiVersion": "v1", "kind": "Service",
                     "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels},
                     "spec": {"selector": labels,
                              "ports": [{"name": "http", "port": spec["port"], "targetPort": "http"}]}})
    return docs


def autoscaling() -> list[dict[str, Any]]:
    contracts = load_contracts()
    docs = []
    for name, spec in SERVICES.items():
        if "group" not in spec:
            continue
        docs.append({
            "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"scaleTargetRef": {"name": name, "kind": "StatefulSet" if name == "royalty" else "Deployment"},
                     "minReplicaCount": 1, "maxReplicaCount": contracts[spec["topic"]].partitions,
                     "triggers": [{"type": "kafka", "metadata": {
                         "bootstrapServers": f"{CLUSTER}-kafka-bootstrap:9093", "consumerGroup": spec["group"],
                         "topic": spec["topic"], "lagThreshold": "1000", "offsetResetPolicy": "earliest"}}]},
        })
    return docs


def kafka_users() -> list[dict[str, Any]]:
    by_user: dict[str, dict[tuple[str, str, str], list[str]]] = {}
    for acl in acls(KafkaSettings.from_env({})):
        resource = (RESOURCE_TYPES[acl.resource], acl.name, acl.pattern.lower())
        by_user.setdefault(acl.user, {}).setdefault(resource, []).append(acl.operation_name)
    return [{
        "apiVersion": "kafka.strimzi.io/v1beta2", "kind": "KafkaUser",
        "metadata": {"name": user, "namespace": NAMESPACE, "labels": {"strimzi.io/cluster": CLUSTER}},
        "spec": {"authentication": {"type": "scram-sha-512"},
                 "authorization": {"type": "simple", "acls": [
                     {"resource": {"type": kind} if kind == "cluster" else {"type": kind, "name": name,
                                                                             "patternType": pattern},
                      "operations": sorted(ops), "host": "*"} for (kind, name, pattern), ops in sorted(resources.items())]}},
    } for user, resources in sorted(by_user.items())]


def render() -> dict[str, str]:
    header = "# Generated by deploy/k8s/generate.py from schemas/ and its service list: do not edit.\n"
    return {f"{name}.yaml": header + yaml.safe_dump_all(docs, sort_keys=False)
            for name, docs in (("topics", kafka_topics()), ("services", workloads()), ("autoscaling", autoscaling()),
                               ("users", kafka_users()), ("registry", registry()))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    files = render()
    stale = [n for n, text in files.items() if not (OUT / n).exists() or (OUT / n).read_text() != text]
    if args.check:
        print("deploy/k8s/generated is " + (f"stale: {', '.join(stale)}" if stale else "up to date"))
        return 1 if stale else 0
    OUT.mkdir(exist_ok=True)
    for name, text in files.items():
        (OUT / name).write_text(text)
    print(f"wrote {', '.join(files)} to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

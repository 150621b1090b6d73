"""Least-privilege Kafka ACLs for every principal, derived from the topic manifests.

A manifest's ``producers`` may write its topic, its ``consumers`` may read it (and write its
DLQ, where they dead-letter); nothing else is granted on topics. The few facts manifests do not
hold (consumer-group names, Faust's internal topics, royalty's transactional ids) are listed
below. Each service has its own principal (``User:<service>``, a SCRAM user in the deployment);
two principals are for outside systems: ``listener-app`` may only write telemetry (apps that
send straight to Kafka instead of through ingest) and ``finance`` may only read royalty topics.

    python -m kit.acls                       # the table, for review
    python -m kit.acls --kafka-acls          # kafka-acls.sh commands for any cluster
    python -m kit.acls --apply               # create them on the configured cluster (admin client)
The Kubernetes deployment gets them as Strimzi KafkaUser resources (deploy/k8s/generate.py).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from kit.contracts import TopicContract, load_contracts
from kit.settings import KafkaSettings

SERVICES = ("ingest", "soundtrack", "delivery", "inference", "retrainer", "watermark", "royalty")
EXTERNAL = ("listener-app", "finance")
# Manifest names that are not principals of their own.
ALIASES = {"royalty statements": "finance"}
# principal -> consumer-group name prefixes it uses (PREFIXED ACLs)
GROUPS = {"soundtrack": ("{prefix}soundtrack",), "delivery": ("soundtrack-delivery-",),
          "inference": ("{prefix}inference", "inference-consent-reader", "inference-model-registry",
                        "inference-delivery-reader"),
          "retrainer": ("inference-consent-reader", "inference-model-registry"), "watermark": ("{prefix}watermark",),
          "royalty": ("{prefix}royalty", "royalty-"), "finance": ("finance", "statement-")}
# Topics a principal reads although no manifest names it a consumer.
# Delivery answers GET /v1/me/export: it reads the listener's partition of every topic that
# carries a listener, and the soundtrack worker's changelog (granted below).
EXTRA_READS = {"delivery": ("soundtrack.segments.v1", "listener.telemetry.v1", "listener.plays.v1",
                            "soundtrack.requests.v1", "listener.erasures.v1")}


@dataclass(frozen=True, order=True)
class Acl:
    principal: str  # User:<name>
    resource: str  # TOPIC, GROUP, TRANSACTIONAL_ID, BROKER (the cluster: name kafka-cluster)
    name: str
    pattern: str  # LITERAL or PREFIXED
    operation: str  # READ, WRITE, DESCRIBE, CREATE, DESCRIBE_CONFIGS

    @property
    def user(self) -> str:
        return self.principal.removeprefix("User:")

    @property
    def operation_name(self) -> str:
        """As kafka-acls.sh and Strimzi spell it: DescribeConfigs."""
        return "".join(word.title() for word in self.operation.split("_"))


def _principal(name: str) -> str | None:
    name = ALIASES.get(name, name)
    return f"User:{name}" if name in SERVICES + EXTERNAL else None


def _topic_acls(settings: KafkaSettings, contract: TopicContract) -> set[Acl]:
    topic, out = settings.topic(contract.name), set()
    for producer in contract.producers:
        if (who := _principal(producer)) is not None:
            out |= {Acl(who, "TOPIC", topic, "LITERAL", op) for op in ("WRITE", "DESCRIBE")}
    for consumer in contract.consumers:
        if (who := _principal(consumer)) is not None:
            out |= {Acl(who, "TOPIC", topic, "LITERAL", op) for op in ("READ", "DESCRIBE")}
            if contract.dlq and who != "User:finance":
                out |= {Acl(who, "TOPIC", settings.topic(contract.dlq_name), "LITERAL", op)
                        for op in ("WRITE", "DESCRIBE")}
    return out


def acls(settings: KafkaSettings) -> list[Acl]:
    contracts = load_contracts()
    out: set[Acl] = set()
    for contract in contracts.values():
        out |= _topic_acls(settings, contract)
    for name, topics in EXTRA_READS.items():
        out |= {Acl(f"User:{name}", "TOPIC", settings.topic(t), "LITERAL", op)
                for t in topics for op in ("READ", "DESCRIBE")}
    out |= {Acl("User:listener-app", "TOPIC", settings.topic("listener.telemetry.v1"), "LITERAL", op)
            for op in ("WRITE", "DESCRIBE")}
    for name, prefixes in GROUPS.items():
        out |= {Acl(f"User:{name}", "GROUP", p.format(prefix=settings.topic_prefix), "PREFIXED", op)
                for p in prefixes for op in ("READ", "DESCRIBE")}
    # Faust creates and uses its own topics: <app id>-<table>-changelog and <app id>-__assignor-__leader
    # (the app id is <prefix>soundtrack).
    out |= {Acl("User:soundtrack", "TOPIC", settings.topic("soundtrack-"), "PREFIXED", op)
            for op in ("CREATE", "READ", "WRITE", "DESCRIBE")}
    out |= {Acl("User:delivery", "TOPIC", settings.topic("soundtrack-listeners-changelog"), "LITERAL", op)
            for op in ("READ", "DESCRIBE")}
    # Faust's topics get the cluster's default replication, read from a broker's configuration.
    out.add(Acl("User:soundtrack", "BROKER", "kafka-cluster", "LITERAL", "DESCRIBE_CONFIGS"))
    # Royalty's transactional ids are royalty-<instance>.
    out |= {Acl("User:royalty", "TRANSACTIONAL_ID", "royalty-", "PREFIXED", op) for op in ("WRITE", "DESCRIBE")}
    return sorted(out)


def kafka_acls_commands(rules: list[Acl], bootstrap: str = "$BOOTSTRAP") -> list[str]:
    flag = {"TOPIC": "--topic", "GROUP": "--group", "TRANSACTIONAL_ID": "--transactional-id"}
    return [f"kafka-acls.sh --bootstrap-server {bootstrap} --command-config admin.properties --add "
            f"--allow-principal {a.principal} --operation {a.operation_name} "
            + ("--cluster" if a.resource == "BROKER" else
               f"{flag[a.resource]} '{a.name}' --resource-pattern-type {a.pattern.lower()}") for a in rules]


def apply(settings: KafkaSettings, rules: list[Acl]) -> int:
    from confluent_kafka.admin import (  # type: ignore[attr-defined]  # re-exported from the C module
        AclBinding,
        AclOperation,
        AclPermissionType,
        AdminClient,
        ResourcePatternType,
        ResourceType,
    )

    bindings = [AclBinding(ResourceType[a.resource], a.name, ResourcePatternType[a.pattern], a.principal, "*",
                           AclOperation[a.operation], AclPermissionType.ALLOW) for a in rules]
    admin = AdminClient(settings.client_config())  # kept alive until the futures resolve
    for future in admin.create_acls(bindings).values():
        future.result()
    return len(bindings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kafka-acls", action="store_true", help="print kafka-acls.sh commands")
    parser.add_argument("--apply", action="store_true", help="create the ACLs on the configured cluster")
    args = parser.parse_args(argv)
    settings = KafkaSettings.from_env()
    rules = acls(settings)
    if args.apply:
        print(f"created {apply(settings, rules)} ACLs on {settings.bootstrap_servers}")
    elif args.kafka_acls:
        print("\n".join(kafka_acls_commands(rules)))
    else:
        for a in rules:
            print(f"{a.principal:18s} {a.operation:9s} {a.resource:16s} {a.pattern:8s} {a.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Create every topic in schemas/ (and its DLQ) on the configured cluster, and register every
committed schema version in the schema registry (kit.serde.register_schemas).

Idempotent: existing topics are left alone when they match; their retention and
cleanup policy are brought in line with the manifest. A partition count that
differs from the manifest is refused, loudly: changing it re-maps keys to
partitions and breaks per-key ordering, so it must be a deliberate migration.

Usage: python -m kit.topics [--check | --schemas-only]
"""

from __future__ import annotations

import argparse
import sys
import time

from confluent_kafka.admin import (  # type: ignore[attr-defined]  # re-exported from the C module
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
)

from kit.contracts import TopicContract, load_contracts
from kit.serde import register_schemas
from kit.settings import KafkaSettings

DLQ_RETENTION_MS = 14 * 86_400_000


class PartitionMismatch(RuntimeError):
    """An existing topic's partition count differs from its manifest."""


TopicPlan = dict[str, tuple[int, dict[str, str]]]


def desired_topics(settings: KafkaSettings, contracts: dict[str, TopicContract]) -> TopicPlan:
    """Physical topic name -> (partitions, config) for every topic and DLQ."""
    wanted: dict[str, tuple[int, dict[str, str]]] = {}
    isr = {"min.insync.replicas": str(settings.min_insync_replicas)} if settings.min_insync_replicas else {}
    for c in contracts.values():
        wanted[settings.topic(c.name)] = (c.partitions, c.topic_config() | isr)
        if c.dlq:
            wanted[settings.topic(c.dlq_name)] = (
                1, {"retention.ms": str(DLQ_RETENTION_MS), "cleanup.policy": "delete"} | isr)
    return wanted


def cluster_size(settings: KafkaSettings, timeout_s: float = 30.0) -> int:
    """How many brokers answer now (from a metadata request)."""
    return len(AdminClient(settings.client_config()).list_topics(timeout=timeout_s).brokers)


def cluster_replication(settings: KafkaSettings, timeout_s: float = 30.0) -> tuple[int, int]:
    """The cluster's own defaults for new topics: (default.replication.factor, min.insync.replicas),
    from a broker's configuration (not from how many brokers happen to be up)."""
    admin = AdminClient(settings.client_config())
    broker = min(admin.list_topics(timeout=timeout_s).brokers)
    [future] = admin.describe_configs([ConfigResource(ConfigResource.Type.BROKER, str(broker))]).values()
    config = future.result(timeout=timeout_s)
    return int(config["default.replication.factor"].value), int(config["min.insync.replicas"].value)


def ensure_topics(settings: KafkaSettings, check_only: bool = False, timeout_s: float = 30.0) -> list[str]:
    """Create missing topics; return the names created. Raises PartitionMismatch."""
    admin = AdminClient(settings.client_config())
    wanted = desired_topics(settings, load_contracts())
    existing = admin.list_topics(timeout=timeout_s).topics
    mismatched = [
        f"{name}: has {len(existing[name].partitions)} partitions, manifest says {parts}"
        for name, (parts, _) in wanted.items()
        if name in existing and len(existing[name].partitions) != parts
    ]
    _refuse_mismatches(mismatched)
    missing = [name for name in wanted if name not in existing]
    if check_only:
        return missing
    if missing:
        missing = _create(admin, settings, {name: wanted[name] for name in missing}, timeout_s)
    present = [name for name in wanted if name in existing]
    if present:
        resources = [
            ConfigResource(ConfigResource.Type.TOPIC, name, incremental_configs=[
                ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)
                for key, value in wanted[name][1].items()])
            for name in present
        ]
        for future in admin.incremental_alter_configs(resources).values():
            future.result()
    register_schemas(settings, load_contracts())
    return missing


def ensure_topic(settings: KafkaSettings, name: str, partitions: int, config: dict[str, str],
                 timeout_s: float = 30.0) -> bool:
    """Create one topic that no manifest describes (a framework's internal topic) unless it exists,
    and wait for its leaders; True if it was created. Raises PartitionMismatch."""
    admin = AdminClient(settings.client_config())
    existing = admin.list_topics(timeout=timeout_s).topics
    if name in existing:
        _check_partitions(admin, {name: partitions}, timeout_s)
        return False
    return bool(_create(admin, settings, {name: (partitions, config)}, timeout_s))


def _create(admin: AdminClient, settings: KafkaSettings, topics: dict[str, tuple[int, dict[str, str]]],
            timeout_s: float) -> list[str]:
    """Create the topics and wait for their leaders; return those this call created (another
    creator may win a race: then only its partition count is checked)."""
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=parts, replication_factor=settings.replication_factor or -1, config=config)
         for name, (parts, config) in topics.items()],
        operation_timeout=timeout_s,
    )
    raced = []
    for name, future in futures.items():
        try:
            future.result()
        except Exception as exc:  # a concurrent creator won, or our metadata view was stale
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
            raced.append(name)
    _check_partitions(admin, {name: topics[name][0] for name in raced}, timeout_s)
    created = [name for name in topics if name not in raced]
    _wait_for_leaders(admin, created, timeout_s)
    return created


def _check_partitions(admin: AdminClient, expected: dict[str, int], timeout_s: float) -> None:
    """Re-read topics that already existed although the first metadata view missed them
    (metadata propagates asynchronously) and refuse a partition-count mismatch."""
    wrong = []
    for name, parts in expected.items():
        deadline = time.monotonic() + timeout_s
        while True:  # a topic created a moment ago may list no partitions yet
            found = len(admin.list_topics(topic=name, timeout=timeout_s).topics[name].partitions)
            if found or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if found != parts:
            wrong.append(f"{name}: has {found} partitions, manifest says {parts}")
    _refuse_mismatches(wrong)


def _wait_for_leaders(admin: AdminClient, names: list[str], timeout_s: float) -> None:
    """Return once every partition of ``names`` has a leader: a client that asks a new topic for
    offsets before its leader is elected gets NOT_LEADER_FOR_PARTITION."""
    deadline = time.monotonic() + timeout_s
    waiting = list(names)
    while waiting:
        topics = admin.list_topics(timeout=timeout_s).topics
        waiting = [name for name in waiting
                   if name not in topics or topics[name].error is not None or not topics[name].partitions
                   or any(p.leader < 0 or p.error is not None for p in topics[name].partitions.values())]
        if waiting and time.monotonic() > deadline:
            raise TimeoutError(f"no leader after {timeout_s:.0f} s for: {', '.join(sorted(waiting))}")
        if waiting:
            time.sleep(0.1)


def _refuse_mismatches(lines: list[str]) -> None:
    if lines:
        raise PartitionMismatch(
            "refusing to change partition counts (re-keys every record):\n  " + "\n  ".join(lines))


def delete_prefixed_topics(settings: KafkaSettings) -> list[str]:
    """Delete every topic under ``settings.topic_prefix`` (for throw-away test and benchmark
    environments). Refuses an empty prefix: that would be the whole cluster."""
    if not settings.topic_prefix:
        raise ValueError("refusing to delete topics without a topic prefix")
    admin = AdminClient(settings.client_config())
    names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(settings.topic_prefix)]
    if names:
        for future in admin.delete_topics(names, operation_timeout=30).values():
            future.result()
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only report missing or mismatched topics")
    parser.add_argument("--schemas-only", action="store_true",
                        help="only register the schemas (topics are managed elsewhere, e.g. Strimzi KafkaTopics)")
    args = parser.parse_args(argv)
    settings = KafkaSettings.from_env()
    if args.schemas_only:
        registered = register_schemas(settings, load_contracts())
        print(f"schemas: {sum(map(len, registered.values()))} versions under {len(registered)} subjects "
              f"at {settings.registry.display_url}")
        return 0
    try:
        missing = ensure_topics(settings, check_only=args.check)
    except PartitionMismatch as exc:
        print(f"topics: {exc}", file=sys.stderr)
        return 2
    total = len(desired_topics(settings, load_contracts()))
    if args.check:
        print(f"topics: {total - len(missing)}/{total} present"
              + (f"; missing: {', '.join(missing)}" if missing else ""))
        return 1 if missing else 0
    print(f"topics: {total} topics on {settings.bootstrap_servers}; created {len(missing)}" +
          (f": {', '.join(missing)}" if missing else "") + f"; schemas registered at {settings.registry.display_url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

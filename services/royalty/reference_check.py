"""Dead-letters malformed records on the reference topics royalty reads.

catalog.works.v1, catalog.consent.v1 and soundtrack.segments.v1 are read whole by
every royalty instance (``TableFeed``), which skips what it cannot use. Someone must
still put each bad record, once, into its topic's DLQ with the reason: this loop, in
its own consumer group (one owner per partition, offsets committed after the DLQ write),
runs in a thread of every royalty process.
"""

from __future__ import annotations

import threading

from kit.consumer import ConsumerLoop, InvalidRecord, Record
from kit.producer import Producer
from kit.settings import KafkaSettings
from royalty.rules import InvalidReference
from royalty.tables import CONSENT, SEGMENTS, WORKS, ReferenceTables

SERVICE = "royalty"


def check(kafka: KafkaSettings, record: Record) -> None:
    """Raise InvalidRecord when the tables could not use ``record``."""
    logical = record.topic.removeprefix(kafka.topic_prefix)
    try:
        ReferenceTables().apply(logical, record.key, record.value, record.timestamp_ms)
    except (InvalidReference, KeyError, TypeError) as exc:
        raise InvalidRecord(f"unusable {logical} record: {type(exc).__name__}: {exc}") from exc


def start(kafka: KafkaSettings, group_id: str) -> tuple[ConsumerLoop, threading.Thread]:
    loop = ConsumerLoop(kafka, SERVICE, f"{group_id}-reference-check", [WORKS, CONSENT, SEGMENTS],
                        lambda record: check(kafka, record), Producer(kafka, SERVICE))
    thread = threading.Thread(target=loop.run, name="reference-check", daemon=True)
    thread.start()
    return loop, thread

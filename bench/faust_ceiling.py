"""The least a Faust worker can do with our telemetry: iterate the events and decode each key
and value, nothing else (no state, no output). ``make bench-adapt`` runs it on the same topic,
after the soundtrack worker, as the ceiling Faust itself puts on the worker's events/s.

Run by the bench as ``python bench/faust_ceiling.py worker`` with ENTRAIN_TOPIC_PREFIX and
FAUST_CEILING_APP_ID (its consumer group) in the environment."""

from __future__ import annotations

import os
import sys
from typing import Any

import faust

from kit.serde import TopicSerde
from kit.settings import KafkaSettings
from soundtrack.broker import app_settings, quiet_faust_logging

kafka = KafkaSettings.from_env()
serde = TopicSerde.for_topic("listener.telemetry.v1", kafka)
app = faust.App(os.environ["FAUST_CEILING_APP_ID"], **app_settings(kafka, (1, 1)), store="memory://",
                topic_partitions=serde.contract.partitions, web_enabled=False, broker_commit_interval=1.0,
                datadir=os.environ["FAUST_CEILING_DATADIR"])
topic = app.topic(serde.topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")


@app.agent(topic)
async def decode_only(stream: Any) -> None:
    async for event in stream.events():
        serde.decode_key(event.key)
        serde.decode_value(event.value)


if __name__ == "__main__":
    quiet_faust_logging()  # as the soundtrack worker does
    sys.argv = [sys.argv[0], "worker", "--loglevel", "warn", "--without-web"]
    app.main()

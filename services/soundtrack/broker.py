"""The Faust app's connection and topic settings, from the kit's KafkaSettings.

Faust (over aiokafka) does not read librdkafka settings, so the kit's protocol, SASL and TLS
settings are mapped here: one ``broker_credentials`` for every client Faust makes (consumer,
producer, and the topic creation they do; Faust has no separate admin client).

* PLAINTEXT: nothing; SASL_PLAINTEXT: SCRAM credentials; SASL_SSL: SCRAM over TLS;
  SSL: TLS, with the client certificate and key when set (mutual TLS).
* The TLS context verifies the broker against ``KAFKA_SSL_CA_LOCATION`` (the system's trust
  store when unset) and its host name. It is built here, not with Faust's SSLCredentials,
  which cannot load a client certificate.
* Changelog and internal topics get the cluster's replication: ENTRAIN_KAFKA_REPLICATION_FACTOR
  and ENTRAIN_KAFKA_MIN_INSYNC_REPLICAS when set, else the cluster's own defaults for new topics
  (``default.replication.factor``, ``min.insync.replicas``, asked of a broker at start), which
  is what every other topic the project creates gets.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

import faust

from kit.settings import KafkaSettings


def ssl_context(kafka: KafkaSettings) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=kafka.ssl_ca_location)
    if kafka.ssl_certificate_location:
        context.load_cert_chain(kafka.ssl_certificate_location, kafka.ssl_key_location)
    return context


def credentials(kafka: KafkaSettings) -> Any:
    """Faust's ``broker_credentials`` for the kit's settings (None for PLAINTEXT)."""
    protocol = kafka.security_protocol
    tls = ssl_context(kafka) if protocol in ("SSL", "SASL_SSL") else None
    if protocol.startswith("SASL"):
        return faust.SASLCredentials(username=kafka.sasl_username, password=kafka.sasl_password,
                                     mechanism=(kafka.sasl_mechanism or "SCRAM-SHA-512").upper(), ssl_context=tls)
    return tls  # SSL: Faust wraps a bare context in SSLCredentials; PLAINTEXT: None


def replication(kafka: KafkaSettings, cluster: tuple[int, int]) -> tuple[int, int]:
    """(replication factor, min.insync.replicas) for the topics Faust creates: the settings', else
    the cluster's defaults."""
    return kafka.replication_factor or cluster[0], kafka.min_insync_replicas or cluster[1]


def app_settings(kafka: KafkaSettings, cluster: tuple[int, int]) -> dict[str, Any]:
    """Keyword arguments for ``faust.App``: brokers, credentials, replication."""
    factor, _ = replication(kafka, cluster)
    settings: dict[str, Any] = {
        "broker": [f"kafka://{server.strip()}" for server in kafka.bootstrap_servers.split(",")],
        "topic_replication_factor": factor,
    }
    if kafka.security_protocol != "PLAINTEXT":
        settings["broker_credentials"] = credentials(kafka)
    return settings


def topic_config(kafka: KafkaSettings, cluster: tuple[int, int]) -> dict[str, str]:
    """Extra configuration for the changelog and internal topics Faust creates."""
    return {"min.insync.replicas": str(replication(kafka, cluster)[1])}


def quiet_faust_logging() -> None:
    """Faust's worker leaves the root logger at DEBUG (its --loglevel sets its handler): every debug
    call in aiokafka and Faust built a record per message (~4% of the worker's time)."""
    for name in ("aiokafka", "faust", "mode"):
        logging.getLogger(name).setLevel(logging.WARNING)

"""The Faust worker's connection settings follow the kit's, for every protocol."""

from __future__ import annotations

import ssl

import faust
import pytest

from kit.settings import KafkaSettings, RegistrySettings, SettingsError
from soundtrack.broker import app_settings, replication, topic_config

SCRAM = {"KAFKA_BOOTSTRAP_SERVERS": "b1:9093,b2:9093", "KAFKA_SASL_USERNAME": "soundtrack",
         "KAFKA_SASL_PASSWORD": "secret"}


def test_plaintext_has_no_credentials_and_every_broker() -> None:
    settings = app_settings(KafkaSettings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "b1:9092, b2:9092"}), cluster=(1, 1))
    assert settings["broker"] == ["kafka://b1:9092", "kafka://b2:9092"] and "broker_credentials" not in settings


@pytest.mark.parametrize(("protocol", "tls"), [("SASL_PLAINTEXT", False), ("SASL_SSL", True)])
def test_scram_credentials_with_tls_exactly_when_asked(protocol: str, tls: bool) -> None:
    kafka = KafkaSettings.from_env({**SCRAM, "KAFKA_SECURITY_PROTOCOL": protocol})
    credentials = app_settings(kafka, cluster=(3, 2))["broker_credentials"]
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.username == "soundtrack" and credentials.password == "secret"
    assert credentials.mechanism.value == "SCRAM-SHA-512"
    assert isinstance(credentials.ssl_context, ssl.SSLContext) is tls
    if tls:
        assert credentials.ssl_context.check_hostname and credentials.ssl_context.verify_mode == ssl.CERT_REQUIRED


def test_ssl_is_a_verifying_context() -> None:
    kafka = KafkaSettings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "b:9093", "KAFKA_SECURITY_PROTOCOL": "SSL"})
    context = app_settings(kafka, cluster=(3, 2))["broker_credentials"]
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED


def test_replication_follows_the_cluster_unless_set() -> None:
    kafka = KafkaSettings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "b:9092"})
    assert replication(kafka, (1, 1)) == (1, 1) and replication(kafka, (3, 2)) == (3, 2)
    pinned = KafkaSettings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "b:9092", "ENTRAIN_KAFKA_REPLICATION_FACTOR": "5",
                                     "ENTRAIN_KAFKA_MIN_INSYNC_REPLICAS": "3"})
    assert app_settings(pinned, (3, 2))["topic_replication_factor"] == 5 and topic_config(pinned, (3, 2)) == {
        "min.insync.replicas": "3"}


def test_production_refuses_plaintext_for_the_worker_too() -> None:
    with pytest.raises(SettingsError, match="production"):
        KafkaSettings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "b:9092", "ENTRAIN_ENV": "production"})


def test_registry_settings_from_the_environment() -> None:
    local = RegistrySettings.from_env({})
    assert local.local and local.url == "http://127.0.0.1:8081/apis/ccompat/v7" and local.management_port == 9081
    managed = RegistrySettings.from_env({"ENTRAIN_SCHEMA_REGISTRY_URL": "https://sr.example/",
                                         "ENTRAIN_SCHEMA_REGISTRY_USER_INFO": "key:secret"})
    config = managed.client_config()
    assert not managed.local and config["url"] == "https://sr.example"
    assert config["basic.auth.user.info"] == "key:secret"
    assert config["timeout"] > 0  # the client's own default waits forever
    assert RegistrySettings(url="https://key:secret@sr.example/apis").display_url == "https://sr.example/apis"
    assert "secret" not in repr(managed)
    for bad in ({"ENTRAIN_SCHEMA_REGISTRY_URL": "ftp://x"}, {"ENTRAIN_SCHEMA_REGISTRY_USER_INFO": "nocolon"},
                {"ENTRAIN_SCHEMA_REGISTRY_URL": "mock://x", "ENTRAIN_ENV": "production"}):
        with pytest.raises(SettingsError):
            RegistrySettings.from_env(bad)

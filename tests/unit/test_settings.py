import pytest

from kit.settings import KafkaSettings, SettingsError


def test_defaults_point_at_the_local_stack() -> None:
    s = KafkaSettings.from_env({})
    assert s.bootstrap_servers == "127.0.0.1:9092"
    assert s.local_kafka
    assert s.client_config() == {"bootstrap.servers": "127.0.0.1:9092", "security.protocol": "PLAINTEXT"}
    assert s.topic("listener.plays.v1") == "listener.plays.v1"


def test_port_and_prefix_are_configurable() -> None:
    s = KafkaSettings.from_env({"ENTRAIN_KAFKA_PORT": "19092", "ENTRAIN_TOPIC_PREFIX": "staging."})
    assert s.bootstrap_servers == "127.0.0.1:19092"
    assert s.kafka_controller_port == 19093
    assert s.topic("listener.plays.v1") == "staging.listener.plays.v1"


def test_another_cluster_is_used_as_configured_and_never_started() -> None:
    s = KafkaSettings.from_env({
        "KAFKA_BOOTSTRAP_SERVERS": "kafka-0.kafka:9093", "KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
        "KAFKA_SASL_USERNAME": "royalty", "KAFKA_SASL_PASSWORD": "s3cret", "KAFKA_SSL_CA_LOCATION": "/ca.pem",
    })
    assert not s.local_kafka
    cfg = s.client_config()
    assert cfg["bootstrap.servers"] == "kafka-0.kafka:9093"
    assert cfg["security.protocol"] == "SASL_SSL"
    assert cfg["sasl.mechanism"] == "SCRAM-SHA-512"
    assert cfg["ssl.ca.location"] == "/ca.pem"
    assert "s3cret" not in repr(s)


@pytest.mark.parametrize(("env", "message"), [
    ({"ENTRAIN_KAFKA_PORT": "ninety"}, "ENTRAIN_KAFKA_PORT must be an integer"),
    ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL must be one of"),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "needs KAFKA_SASL_USERNAME"),
])
def test_bad_settings_fail_with_the_variable_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        KafkaSettings.from_env(env)


def test_settings_are_frozen() -> None:
    s = KafkaSettings.from_env({})
    with pytest.raises(AttributeError):
        s.bootstrap_servers = "elsewhere:9092"  # type: ignore[misc]


def test_production_mode_refuses_plaintext_kafka_and_development_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    from kit.auth import pseudonymizer_from_env
    from kit.settings import STATE_DIR
    from watermark.keys import KeyConfigError, KeyRing

    with pytest.raises(SettingsError, match="ENTRAIN_ENV must be one of"):
        KafkaSettings.from_env({"ENTRAIN_ENV": "prod"})
    with pytest.raises(SettingsError, match="needs KAFKA_SECURITY_PROTOCOL SSL or SASL_SSL"):
        KafkaSettings.from_env({"ENTRAIN_ENV": "production", "KAFKA_BOOTSTRAP_SERVERS": "kafka:9093"})
    secure = KafkaSettings.from_env({"ENTRAIN_ENV": "production", "KAFKA_BOOTSTRAP_SERVERS": "kafka:9093",
                                     "KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": "ingest",
                                     "KAFKA_SASL_PASSWORD": "from-a-secret"})
    assert secure.client_config()["security.protocol"] == "SASL_SSL"

    dev_file = str(STATE_DIR / "ingest" / "pseudonym.secret")
    with pytest.raises(SettingsError, match="is a development secret"):
        pseudonymizer_from_env({"ENTRAIN_ENV": "production", "ENTRAIN_PSEUDONYM_SECRET_FILE": dev_file})

    monkeypatch.setenv("ENTRAIN_ENV", "production")
    monkeypatch.delenv("ENTRAIN_WATERMARK_KEYS", raising=False)
    monkeypatch.delenv("ENTRAIN_WATERMARK_KEYS_FILE", raising=False)
    with pytest.raises(KeyConfigError, match="development key file is never used"):
        KeyRing.from_env()
    monkeypatch.setenv("ENTRAIN_WATERMARK_KEYS", "wk-prod=" + "ab" * 32)
    assert KeyRing.from_env().active.key_id == "wk-prod"

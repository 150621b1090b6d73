"""Configuration shared by every service, read once from the environment.

Every value has a default that works against the local broker started by
``make up`` (127.0.0.1:$ENTRAIN_KAFKA_PORT). Pointing at another cluster is a
matter of setting ``KAFKA_BOOTSTRAP_SERVERS`` (and the security variables).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMAS_DIR = REPO_ROOT / "schemas"
STATE_DIR = Path(os.environ.get("ENTRAIN_STATE_DIR", REPO_ROOT / ".state"))

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")


class SettingsError(ValueError):
    """A setting from the environment is missing or malformed."""


ENVIRONMENTS = ("development", "production")


def is_production(env: Mapping[str, str] | None = None) -> bool:
    """``ENTRAIN_ENV=production``: no development fallbacks (plaintext Kafka, secrets from .state/)."""
    env = os.environ if env is None else env
    mode = env.get("ENTRAIN_ENV", "development")
    if mode not in ENVIRONMENTS:
        raise SettingsError(f"ENTRAIN_ENV must be one of {', '.join(ENVIRONMENTS)}, got {mode!r}")
    return mode == "production"


def refuse_dev_secret(env: Mapping[str, str], name: str, path: Path) -> None:
    """In production, a secret file from the development state folder (``make dev-secrets``) is refused."""
    if is_production(env) and path.resolve().is_relative_to(STATE_DIR.resolve()):
        raise SettingsError(f"{name}: {path} is a development secret (under {STATE_DIR}); "
                            "production secrets come from the environment or a mounted secret file")


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None


DEFAULT_REGISTRY_URL = "http://127.0.0.1:8081/apis/ccompat/v7"


@dataclass(frozen=True)
class RegistrySettings:
    """How to reach the Confluent-compatible schema registry (Apicurio's ``/apis/ccompat/v7``,
    Confluent Schema Registry or Cloud, Aiven Karapace, ...).

    ``local`` says whether it is the one ``make up`` manages (ENTRAIN_SCHEMA_REGISTRY_URL unset;
    then it listens on 127.0.0.1:$ENTRAIN_REGISTRY_PORT, default 8081).
    Basic auth, when the registry wants it, is ``ENTRAIN_SCHEMA_REGISTRY_USER_INFO=user:secret``.
    """

    url: str = DEFAULT_REGISTRY_URL
    user_info: str | None = field(default=None, repr=False)
    local: bool = True
    management_port: int = 9081

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RegistrySettings:
        env = os.environ if env is None else env
        url = env.get("ENTRAIN_SCHEMA_REGISTRY_URL", "")
        local = f"http://127.0.0.1:{_int(env, 'ENTRAIN_REGISTRY_PORT', 8081)}/apis/ccompat/v7"
        chosen = (url or local).rstrip("/")
        if not chosen.startswith(("http://", "https://")) and not (chosen.startswith("mock://")
                                                                   and not is_production(env)):
            raise SettingsError(f"ENTRAIN_SCHEMA_REGISTRY_URL must be an http(s) URL, got {chosen!r}")
        user_info = env.get("ENTRAIN_SCHEMA_REGISTRY_USER_INFO") or None
        if user_info is not None and ":" not in user_info:
            raise SettingsError("ENTRAIN_SCHEMA_REGISTRY_USER_INFO must be user:secret")
        settings = cls(url=chosen, user_info=user_info, local=not url, management_port=0)
        return replace(settings, management_port=_int(env, "ENTRAIN_REGISTRY_MANAGEMENT_PORT", settings.port + 1000))

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or (443 if self.url.startswith("https") else 80)

    @property
    def display_url(self) -> str:
        """The URL without any user:secret part, for logs."""
        parts = urlsplit(self.url)
        return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()

    def client_config(self) -> dict[str, Any]:
        """confluent-kafka ``SchemaRegistryClient`` settings: a registry that stops answering costs
        a consumer seconds, not forever (the client's own default is no timeout)."""
        config: dict[str, Any] = {"url": self.url, "timeout": 10, "max.retries": 2, "retries.max.wait.ms": 2000}
        if self.user_info:
            config["basic.auth.user.info"] = self.user_info
        return config

    def auth_headers(self) -> dict[str, str]:
        if not self.user_info:
            return {}
        return {"Authorization": "Basic " + base64.b64encode(self.user_info.encode()).decode()}


@dataclass(frozen=True)
class KafkaSettings:
    """How to reach Kafka.

    ``local_kafka`` says whether the broker is the one ``make up`` manages
    (nothing was configured), so tooling knows whether it may start it.
    """

    bootstrap_servers: str
    topic_prefix: str = ""
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_ca_location: str | None = None
    local_kafka: bool = True
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    kafka_scram_port: int = 9094
    kafka_sasl_ssl_port: int = 9095
    ssl_certificate_location: str | None = None  # mutual TLS: the client's certificate and key
    ssl_key_location: str | None = None
    registry: RegistrySettings = field(default_factory=RegistrySettings)  # where the topics' schemas live
    replication_factor: int | None = None  # for topics we create; None: the cluster's default
    min_insync_replicas: int | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> KafkaSettings:
        env = os.environ if env is None else env
        kafka_port = _int(env, "ENTRAIN_KAFKA_PORT", 9092)
        bootstrap = env.get("KAFKA_BOOTSTRAP_SERVERS", "")
        protocol = env.get("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT").upper()
        if protocol not in SECURITY_PROTOCOLS:
            raise SettingsError(
                f"KAFKA_SECURITY_PROTOCOL must be one of {', '.join(SECURITY_PROTOCOLS)}, got {protocol!r}"
            )
        settings = cls(
            bootstrap_servers=bootstrap or f"127.0.0.1:{kafka_port}",
            topic_prefix=env.get("ENTRAIN_TOPIC_PREFIX", ""),
            security_protocol=protocol,
            sasl_mechanism=env.get("KAFKA_SASL_MECHANISM") or None,
            sasl_username=env.get("KAFKA_SASL_USERNAME") or None,
            sasl_password=env.get("KAFKA_SASL_PASSWORD") or None,
            ssl_ca_location=env.get("KAFKA_SSL_CA_LOCATION") or None,
            local_kafka=not bootstrap,
            kafka_port=kafka_port,
            kafka_controller_port=_int(env, "ENTRAIN_KAFKA_CONTROLLER_PORT", kafka_port + 1),
            kafka_scram_port=_int(env, "ENTRAIN_KAFKA_SCRAM_PORT", kafka_port + 2),
            kafka_sasl_ssl_port=_int(env, "ENTRAIN_KAFKA_SASL_SSL_PORT", kafka_port + 3),
            ssl_certificate_location=env.get("KAFKA_SSL_CERTIFICATE_LOCATION") or None,
            ssl_key_location=env.get("KAFKA_SSL_KEY_LOCATION") or None,
            registry=RegistrySettings.from_env(env),
            replication_factor=_int(env, "ENTRAIN_KAFKA_REPLICATION_FACTOR", 0) or None,
            min_insync_replicas=_int(env, "ENTRAIN_KAFKA_MIN_INSYNC_REPLICAS", 0) or None,
        )
        if is_production(env) and protocol not in ("SSL", "SASL_SSL"):
            raise SettingsError(f"ENTRAIN_ENV=production needs KAFKA_SECURITY_PROTOCOL SSL or SASL_SSL, got {protocol}")
        if protocol.startswith("SASL") and not (settings.sasl_username and settings.sasl_password):
            raise SettingsError(f"{protocol} needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD")
        return settings

    def topic(self, logical_name: str) -> str:
        """The physical topic name for a logical one (environment prefix applied)."""
        return f"{self.topic_prefix}{logical_name}"

    def group(self, name: str) -> str:
        """A consumer group's id: environments on one cluster never share a group (the same prefix)."""
        return f"{self.topic_prefix}{name}"

    def client_config(self) -> dict[str, str | int | float | bool]:
        """librdkafka settings common to producers, consumers and admin clients."""
        config: dict[str, str | int | float | bool] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            config["sasl.mechanism"] = self.sasl_mechanism
        elif self.security_protocol.startswith("SASL"):
            config["sasl.mechanism"] = "SCRAM-SHA-512"
        if self.sasl_username:
            config["sasl.username"] = self.sasl_username
        if self.sasl_password:
            config["sasl.password"] = self.sasl_password
        if self.ssl_ca_location:
            config["ssl.ca.location"] = self.ssl_ca_location
        if self.ssl_certificate_location:
            config["ssl.certificate.location"] = self.ssl_certificate_location
        if self.ssl_key_location:
            config["ssl.key.location"] = self.ssl_key_location
        return config


@dataclass(frozen=True)
class ServiceSettings:
    """Per-process settings of a service: its name and where it serves /metrics."""

    name: str
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, name: str, default_port: int = 0, env: Mapping[str, str] | None = None) -> ServiceSettings:
        env = os.environ if env is None else env
        return cls(
            name=name,
            metrics_host=env.get("ENTRAIN_METRICS_HOST", "127.0.0.1"),
            metrics_port=_int(env, f"ENTRAIN_{name.upper()}_METRICS_PORT", default_port),
            log_level=env.get("ENTRAIN_LOG_LEVEL", "INFO").upper(),
        )


SESSION_TIMEOUT_MS = 15_000  # a consumer that died silently gives up its partitions this fast


def group_membership(service: str, env: Mapping[str, str] | None = None,
                     instance_id: str | None = None) -> dict[str, str | int]:
    """Consumer-group settings for a service's consumers (librdkafka names).

    With ``ENTRAIN_INSTANCE_ID`` (or ``instance_id``) set, the consumer is a *static* member
    (``group.instance.id``): a restarted process with the same id takes its partitions back at
    once, without a rebalance. The id must be unique among running processes of a service and
    stable across restarts of one (a pod name, a supervisor's slot), so there is no default.
    """
    env = os.environ if env is None else env
    config: dict[str, str | int] = {"session.timeout.ms": SESSION_TIMEOUT_MS, "heartbeat.interval.ms": 3_000}
    instance = instance_id or env.get("ENTRAIN_INSTANCE_ID")
    if instance:
        config["group.instance.id"] = f"{service}-{instance}"
    return config

"""Ingest's settings, read once from the environment. Secrets have no defaults."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ingest.security import KeyStore, Pseudonymizer
from ingest.validation import TimeWindow
from kit.contracts import contract
from kit.settings import SettingsError, refuse_dev_secret


def _secret(env: Mapping[str, str], name: str) -> str:
    """A secret from ``<NAME>`` or the file named by ``<NAME>_FILE``; never a default."""
    if env.get(name):
        return env[name]
    path = env.get(f"{name}_FILE")
    if path:
        refuse_dev_secret(env, f"{name}_FILE", Path(path))
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise SettingsError(f"{name}_FILE={path} cannot be read: {exc.strerror}") from None
    raise SettingsError(f"{name} (or {name}_FILE) must be set; `make dev-secrets` creates local ones")


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    try:
        return float(env.get(name, default))
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {env[name]!r}") from None


@dataclass(frozen=True)
class IngestSettings:
    keys: KeyStore = field(repr=False)
    pseudonymizer: Pseudonymizer = field(repr=False)
    host: str = "127.0.0.1"
    port: int = 8080
    max_batch: int = 1000
    max_body_bytes: int = 1_048_576
    max_future_ms: int = 120_000
    ack_timeout_s: float = 10.0
    dedup_window_ms: int = 600_000
    rate_per_key: float = 20_000.0
    burst_per_key: float = 40_000.0
    max_in_flight: int = 100_000
    telemetry_window: TimeWindow = field(default_factory=lambda: TimeWindow(120_000, 259_200_000))
    plays_window: TimeWindow = field(default_factory=lambda: TimeWindow(120_000, 2_592_000_000))
    cors_origins: tuple[str, ...] = ("http://127.0.0.1:8085", "http://localhost:8085")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> IngestSettings:
        env = os.environ if env is None else env
        keys, pseudonymizer = listener_auth(env)
        max_future_ms = int(_number(env, "ENTRAIN_INGEST_MAX_FUTURE_MS", 120_000))
        settings = cls(
            keys=keys,
            pseudonymizer=pseudonymizer,
            host=env.get("ENTRAIN_INGEST_HOST", "127.0.0.1"),
            port=int(_number(env, "ENTRAIN_INGEST_PORT", 8080)),
            max_batch=int(_number(env, "ENTRAIN_INGEST_MAX_BATCH", 1000)),
            max_body_bytes=int(_number(env, "ENTRAIN_INGEST_MAX_BODY_BYTES", 1_048_576)),
            max_future_ms=max_future_ms,
            ack_timeout_s=_number(env, "ENTRAIN_INGEST_ACK_TIMEOUT_S", 10.0),
            dedup_window_ms=int(_number(env, "ENTRAIN_INGEST_DEDUP_WINDOW_MS", 600_000)),
            rate_per_key=_number(env, "ENTRAIN_INGEST_RATE_PER_KEY", 20_000),
            burst_per_key=_number(env, "ENTRAIN_INGEST_BURST_PER_KEY", 40_000),
            max_in_flight=int(_number(env, "ENTRAIN_INGEST_MAX_IN_FLIGHT", 100_000)),
            # An event older than its topic's retention would be deleted on arrival.
            telemetry_window=TimeWindow(max_future_ms, contract("listener.telemetry.v1").retention_ms),
            plays_window=TimeWindow(max_future_ms, contract("listener.plays.v1").retention_ms),
            # Browser pages allowed to call the API (the soundtrack service's listener page by default).
            cors_origins=tuple(o.strip() for o in env.get(
                "ENTRAIN_INGEST_CORS_ORIGINS", "http://127.0.0.1:8085,http://localhost:8085").split(",") if o.strip()),
        )
        if settings.burst_per_key < settings.max_batch:
            raise SettingsError("ENTRAIN_INGEST_BURST_PER_KEY must be at least the maximum batch size")
        return settings


def listener_auth(env: Mapping[str, str]) -> tuple[KeyStore, Pseudonymizer]:
    """The API key store and the user-id pseudonymizer, for every service that serves listeners."""
    secret = _secret(env, "ENTRAIN_PSEUDONYM_SECRET")
    try:
        pseudonymizer = Pseudonymizer(bytes.fromhex(secret) if _is_hex(secret) else secret.encode())
    except ValueError as exc:
        raise SettingsError(f"ENTRAIN_PSEUDONYM_SECRET: {exc}") from None
    return api_keys(env), pseudonymizer


def api_keys(env: Mapping[str, str]) -> KeyStore:
    """The API key store (hashes and scopes) every authenticated HTTP endpoint checks."""
    return KeyStore.from_json(_secret(env, "ENTRAIN_API_KEYS"))


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
        return True
    except ValueError:
        return False

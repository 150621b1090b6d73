"""Ingest's settings, read once from the environment. Secrets have no defaults."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from ingest.validation import TimeWindow
from kit.auth import KeyStore, Pseudonymizer, api_keys, pseudonymizer_from_env
from kit.contracts import contract
from kit.settings import SettingsError
from kit.tokens import TokenIssuer


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    try:
        return float(env.get(name, default))
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {env[name]!r}") from None


@dataclass(frozen=True)
class IngestSettings:
    keys: KeyStore = field(repr=False)
    pseudonymizer: Pseudonymizer = field(repr=False)
    tokens: TokenIssuer = field(repr=False)
    host: str = "127.0.0.1"
    port: int = 8080
    max_batch: int = 1000
    max_body_bytes: int = 1_048_576
    max_future_ms: int = 120_000
    ack_timeout_s: float = 10.0
    dedup_window_ms: int = 600_000
    rate_per_key: float = 20_000.0
    burst_per_key: float = 40_000.0
    rate_per_listener: float = 50.0
    burst_per_listener: float = 1_000.0
    tokens_per_key_s: float = 500.0
    max_in_flight: int = 100_000
    telemetry_window: TimeWindow = field(default_factory=lambda: TimeWindow(120_000, 259_200_000))
    plays_window: TimeWindow = field(default_factory=lambda: TimeWindow(120_000, 2_592_000_000))
    cors_origins: tuple[str, ...] = ("http://127.0.0.1:8085", "http://localhost:8085")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> IngestSettings:
        env = os.environ if env is None else env
        max_future_ms = int(_number(env, "ENTRAIN_INGEST_MAX_FUTURE_MS", 120_000))
        settings = cls(
            keys=api_keys(env),
            pseudonymizer=pseudonymizer_from_env(env),
            tokens=TokenIssuer.from_env(env),
            host=env.get("ENTRAIN_INGEST_HOST", "127.0.0.1"),
            port=int(_number(env, "ENTRAIN_INGEST_PORT", 8080)),
            max_batch=int(_number(env, "ENTRAIN_INGEST_MAX_BATCH", 1000)),
            max_body_bytes=int(_number(env, "ENTRAIN_INGEST_MAX_BODY_BYTES", 1_048_576)),
            max_future_ms=max_future_ms,
            ack_timeout_s=_number(env, "ENTRAIN_INGEST_ACK_TIMEOUT_S", 10.0),
            dedup_window_ms=int(_number(env, "ENTRAIN_INGEST_DEDUP_WINDOW_MS", 600_000)),
            rate_per_key=_number(env, "ENTRAIN_INGEST_RATE_PER_KEY", 20_000),
            burst_per_key=_number(env, "ENTRAIN_INGEST_BURST_PER_KEY", 40_000),
            rate_per_listener=_number(env, "ENTRAIN_INGEST_RATE_PER_LISTENER", 50),
            burst_per_listener=_number(env, "ENTRAIN_INGEST_BURST_PER_LISTENER", 1_000),
            tokens_per_key_s=_number(env, "ENTRAIN_INGEST_TOKENS_PER_KEY_S", 500),
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

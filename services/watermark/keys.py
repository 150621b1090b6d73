"""Watermark keys: id -> secret, one of them active for embedding; detection tries all.

Loaded from ``ENTRAIN_WATERMARK_KEYS`` (``id=hexsecret,id=hexsecret``) or the JSON file
``ENTRAIN_WATERMARK_KEYS_FILE`` (default .state/watermark/keys.json, written by
``make dev-secrets``): ``{"active": "wk-2026-11", "keys": {"wk-2026-11": "<64 hex>"}}``.
``ENTRAIN_WATERMARK_ACTIVE_KEY`` overrides the active id. Rotation: add the new key,
make it active, keep the old one listed for as long as its segments must be detectable.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from kit.settings import STATE_DIR, SettingsError, is_production, refuse_dev_secret
from watermark.scheme import Key

DEFAULT_FILE = STATE_DIR / "watermark" / "keys.json"
MIN_SECRET_BYTES = 16


class KeyConfigError(RuntimeError):
    """The watermark keys are missing or malformed."""


@dataclass(frozen=True)
class KeyRing:
    active: Key
    keys: tuple[Key, ...]

    @classmethod
    def from_mapping(cls, secrets: dict[str, str], active: str | None) -> KeyRing:
        if not secrets:
            raise KeyConfigError("no watermark keys configured (ENTRAIN_WATERMARK_KEYS or ENTRAIN_WATERMARK_KEYS_FILE)")
        keys = []
        for key_id, hex_secret in secrets.items():
            try:
                secret = bytes.fromhex(hex_secret)
            except ValueError as exc:
                raise KeyConfigError(f"watermark key {key_id!r}: secret is not hex") from exc
            if len(secret) < MIN_SECRET_BYTES:
                raise KeyConfigError(f"watermark key {key_id!r}: secret shorter than {MIN_SECRET_BYTES} bytes")
            keys.append(Key(key_id, secret))
        active_id = active or keys[-1].key_id
        by_id = {k.key_id: k for k in keys}
        if active_id not in by_id:
            raise KeyConfigError(f"active watermark key {active_id!r} is not among the configured keys")
        return cls(by_id[active_id], tuple(keys))

    @classmethod
    def from_env(cls) -> KeyRing:
        active = os.environ.get("ENTRAIN_WATERMARK_ACTIVE_KEY")
        inline = os.environ.get("ENTRAIN_WATERMARK_KEYS")
        if inline:
            pairs = [item.split("=", 1) for item in inline.split(",") if item.strip()]
            if any(len(p) != 2 for p in pairs):
                raise KeyConfigError("ENTRAIN_WATERMARK_KEYS must be id=hexsecret[,id=hexsecret...]")
            return cls.from_mapping({k.strip(): v.strip() for k, v in pairs}, active)
        configured = os.environ.get("ENTRAIN_WATERMARK_KEYS_FILE")
        if configured is None and is_production():
            raise KeyConfigError("ENTRAIN_ENV=production: set ENTRAIN_WATERMARK_KEYS or ENTRAIN_WATERMARK_KEYS_FILE "
                                 "(the development key file is never used)")
        path = Path(configured or DEFAULT_FILE)
        try:
            refuse_dev_secret(os.environ, "ENTRAIN_WATERMARK_KEYS_FILE", path)
        except SettingsError as exc:
            raise KeyConfigError(str(exc)) from None
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise KeyConfigError(f"watermark key file {path} not found (run make dev-secrets)") from exc
        except json.JSONDecodeError as exc:
            raise KeyConfigError(f"watermark key file {path} is not JSON: {exc}") from exc
        return cls.from_mapping(dict(data.get("keys", {})), active or data.get("active"))

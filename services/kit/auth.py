"""API keys with scopes, the keyed hash that replaces app user ids, and reading secrets.

Shared by every service that authenticates a caller (ingest, delivery, the detection API).
Keys are stored only as SHA-256 hashes. A key file (``ENTRAIN_API_KEYS_FILE``)
or ``ENTRAIN_API_KEYS`` holds a JSON list of::

    {"key_id": "app-1", "sha256": "<hex of sha256(key)>", "scopes": ["listener-app"],
     "rights_holder_id": null}

``rights_holder_id`` binds a rights-holder key to the one catalog it may change.
A ``listener-app`` key is the server-side credential of an app's backend: it may only
mint listener tokens (``kit.tokens``); listener endpoints take those tokens, not the key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kit.settings import SettingsError, refuse_dev_secret

SCOPES = ("listener-app", "rights-holder", "admin")


class AuthError(Exception):
    """Authentication (401) or authorisation (403) failed; ``reason`` is safe to show."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class KeyFileError(ValueError):
    """The API key configuration is malformed."""


@dataclass(frozen=True)
class Principal:
    key_id: str
    scopes: frozenset[str]
    rights_holder_id: str | None = None

    def require(self, scope: str) -> None:
        if scope not in self.scopes and "admin" not in self.scopes:
            raise AuthError(403, f"key {self.key_id} lacks the {scope} scope")

    def may_change_consent_of(self, rights_holder_id: str) -> None:
        if "admin" in self.scopes:
            return
        self.require("rights-holder")
        if self.rights_holder_id != rights_holder_id:
            raise AuthError(403, f"key {self.key_id} may only change the consent of {self.rights_holder_id}")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class KeyStore:
    by_hash: dict[str, Principal]

    @classmethod
    def from_json(cls, text: str) -> KeyStore:
        try:
            entries = json.loads(text)
        except json.JSONDecodeError as exc:
            raise KeyFileError(f"API keys are not valid JSON: {exc}") from None
        if not isinstance(entries, list) or not entries:
            raise KeyFileError("API keys must be a non-empty JSON list")
        by_hash = {}
        for n, entry in enumerate(entries):
            if not isinstance(entry, dict) or not {"key_id", "sha256", "scopes"} <= entry.keys():
                raise KeyFileError(f"API key entry {n} needs key_id, sha256 and scopes")
            scopes = frozenset(entry["scopes"])
            if not scopes or not scopes <= set(SCOPES):
                raise KeyFileError(f"API key {entry['key_id']}: scopes must be among {SCOPES}")
            if "rights-holder" in scopes and not entry.get("rights_holder_id"):
                raise KeyFileError(f"API key {entry['key_id']}: a rights-holder key needs rights_holder_id")
            digest = str(entry["sha256"]).lower()
            if len(digest) != 64:
                raise KeyFileError(f"API key {entry['key_id']}: sha256 must be 64 hex digits")
            by_hash[digest] = Principal(entry["key_id"], scopes, entry.get("rights_holder_id"))
        return cls(by_hash)

    def authenticate(self, authorization: str | None) -> Principal:
        """Resolve an ``Authorization: Bearer <key>`` header to its principal."""
        if not authorization:
            raise AuthError(401, "missing API key: send Authorization: Bearer <key>")
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise AuthError(401, "malformed Authorization header: expected Bearer <key>")
        # Looked up by the key's hash: timing reveals nothing about a stored key.
        principal = self.by_hash.get(hash_key(key.strip()))
        if principal is None:
            raise AuthError(401, "unknown API key")
        return principal


@dataclass(frozen=True)
class Pseudonymizer:
    """Replaces an app user id with HMAC-SHA256 under a secret key (hex).

    Results are memoised per process (a listener sends many samples); the cache
    lives in memory only and is dropped when it reaches ``cache_size``.
    """

    secret: bytes = field(repr=False)
    cache_size: int = 100_000
    _cache: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.secret) < 32:
            raise ValueError("the pseudonymisation secret must be at least 32 bytes")

    def listener_id(self, app_user_id: str) -> str:
        listener = self._cache.get(app_user_id)
        if listener is None:
            listener = hmac.new(self.secret, app_user_id.encode(), hashlib.sha256).hexdigest()
            if len(self._cache) >= self.cache_size:
                self._cache.clear()
            self._cache[app_user_id] = listener
        return listener


PLAY_NAMESPACE = uuid.UUID("5b0c8f1e-3a7d-5c2e-9f41-6d2a8e0b7c13")  # fixed: changing it re-identifies every play


def listener_play_id(listener_id: str, client_play_id: str) -> str:
    """The id of a listener's play on listener.plays.v1 and downstream: a UUIDv5 of (listener, the
    client's play id). A play is identified by (listener, play id): two listeners' plays never share an
    id, so one listener cannot make another's play a duplicate (or overwrite its ledger entry) by
    posting its id first, and royalty's play ids stay globally unique."""
    return str(uuid.uuid5(PLAY_NAMESPACE, f"{listener_id}/{client_play_id.lower()}"))


def new_key() -> str:
    return "ek_" + secrets.token_urlsafe(32)


def secret_from_env(env: Mapping[str, str], name: str) -> str:
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


def pseudonymizer_from_env(env: Mapping[str, str]) -> Pseudonymizer:
    """The app-user-id pseudonymizer (``ENTRAIN_PSEUDONYM_SECRET``, hex or text)."""
    secret = secret_from_env(env, "ENTRAIN_PSEUDONYM_SECRET")
    try:
        return Pseudonymizer(bytes.fromhex(secret) if _is_hex(secret) else secret.encode())
    except ValueError as exc:
        raise SettingsError(f"ENTRAIN_PSEUDONYM_SECRET: {exc}") from None


def api_keys(env: Mapping[str, str]) -> KeyStore:
    """The API key store (hashes and scopes) every authenticated HTTP endpoint checks."""
    return KeyStore.from_json(secret_from_env(env, "ENTRAIN_API_KEYS"))


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
        return True
    except ValueError:
        return False

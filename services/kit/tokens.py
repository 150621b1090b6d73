"""Short-lived listener tokens: JWTs signed with Ed25519 (JWS ``alg: Ed25519``, RFC 9864) through joserfc.

An app's backend holds the ``listener-app`` API key and exchanges it at ingest
(``POST /v1/tokens``) for a token naming one listener; the app hands that token to the
device. Every listener-scoped endpoint (ingest's telemetry, plays, erasures, export;
delivery's playlists, audio URLs, underruns) takes the listener, subscription tier and
territory from the verified token, never from the request.

Claims: ``iss`` (entrain), ``aud`` (entrain-listener), ``sub`` (the pseudonymous listener
id, never the app's user id), ``tier``, ``territory``, ``app`` (the minting key's id, for
per-app limits), ``iat``, ``exp``, ``jti``. The header's ``kid`` names the signing key.

Keys are JWK sets. The issuer (ingest) holds private keys, ``ENTRAIN_TOKEN_SIGNING_KEYS``
(or ``_FILE``); the first key signs. Verifiers hold public keys only,
``ENTRAIN_TOKEN_PUBLIC_KEYS`` (or ``_FILE``). Rotation: add the new key first in the
signing set and to every verifier's public set, wait one token lifetime, then remove the
old key from both. Only Ed25519 is accepted: ``alg: none`` and HMAC-with-the-public-key
confusion are refused by construction.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, OKPKey

from kit.auth import AuthError, secret_from_env
from kit.settings import SettingsError

ISSUER, AUDIENCE, ALGORITHM = "entrain", "entrain-listener", "Ed25519"
DEFAULT_TTL_S = 3600
MAX_TOKEN_CHARS = 4096


@dataclass(frozen=True, slots=True)
class Listener:
    """Who a verified token speaks for."""

    listener_id: str
    subscription_tier: str
    territory: str
    app_id: str
    expires_at: int  # epoch seconds


def generate_key_set(kid: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """A new Ed25519 key as (private JWK set, public JWK set)."""
    key = OKPKey.generate_key("Ed25519", parameters={"kid": kid or f"lt-{secrets.token_hex(4)}",
                                                     "use": "sig", "alg": ALGORITHM})
    return {"keys": [key.as_dict(private=True)]}, {"keys": [key.as_dict(private=False)]}


def _key_set(text: str, name: str, private: bool) -> KeySet:
    try:
        data = json.loads(text)
        keys = KeySet.import_key_set(data)
    except (ValueError, JoseError, TypeError) as exc:
        raise SettingsError(f"{name} is not a JWK set: {exc}") from None
    if not keys.keys:
        raise SettingsError(f"{name} holds no key")
    for key in keys.keys:
        if not isinstance(key, OKPKey) or key.as_dict().get("crv") != "Ed25519" or not key.kid:
            raise SettingsError(f"{name}: every key must be an Ed25519 OKP key with a kid")
        if private and not key.is_private:
            raise SettingsError(f"{name}: the signing set needs private keys")
        if not private and key.is_private:
            raise SettingsError(f"{name}: a verifier's set must hold public keys only")
    return keys


class TokenVerifier:
    """Checks a listener token's signature (by ``kid``), audience, issuer and expiry.

    A device sends many requests with one token: a verified token is remembered (bounded, by its
    exact text) so later requests only re-check its expiry, not the Ed25519 signature (~0.1 ms)."""

    def __init__(self, public_keys: KeySet, clock_skew_s: int = 30, cache_size: int = 50_000) -> None:
        self._keys = {key.kid: key for key in public_keys.keys}
        self._skew_s = clock_skew_s
        self._verified: OrderedDict[str, Listener] = OrderedDict()
        self._cache_size = cache_size

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TokenVerifier:
        name = "ENTRAIN_TOKEN_PUBLIC_KEYS"
        return cls(_key_set(secret_from_env(env, name), name, private=False))

    def verify(self, token: str, now_s: float) -> Listener:
        """The listener a token names; raises AuthError(401) with the reason otherwise."""
        known = self._verified.get(token)
        if known is not None:
            if now_s > known.expires_at + self._skew_s:
                del self._verified[token]
                raise AuthError(401, "token rejected: The token is expired")
            return known
        listener = self._verify(token, now_s)
        self._verified[token] = listener
        if len(self._verified) > self._cache_size:
            self._verified.popitem(last=False)
        return listener

    def _verify(self, token: str, now_s: float) -> Listener:
        if len(token) > MAX_TOKEN_CHARS or token.count(".") != 2:
            raise AuthError(401, "not a listener token (expected a JWT from POST /v1/tokens)")
        try:
            header = json.loads(_b64(token.split(".", 1)[0]))
        except ValueError:
            raise AuthError(401, "token header is not base64url JSON") from None
        if not isinstance(header, dict) or header.get("alg") != ALGORITHM:
            raise AuthError(401, f"token algorithm must be {ALGORITHM}")
        key = self._keys.get(str(header.get("kid")))
        if key is None:
            raise AuthError(401, "token signed with an unknown key id (kid)")
        try:
            decoded = jwt.decode(token, key, algorithms=[ALGORITHM])
        except (JoseError, ValueError):
            raise AuthError(401, "token signature is invalid") from None
        claims = decoded.claims
        registry = jwt.JWTClaimsRegistry(
            now=int(now_s), leeway=self._skew_s, iss={"essential": True, "value": ISSUER},
            aud={"essential": True, "value": AUDIENCE}, sub={"essential": True}, exp={"essential": True},
            tier={"essential": True}, territory={"essential": True}, app={"essential": True})
        try:
            registry.validate(claims)
        except JoseError as exc:
            raise AuthError(401, f"token rejected: {exc.description or exc.error}") from None
        for name in ("sub", "tier", "territory", "app"):
            if not isinstance(claims.get(name), str):
                raise AuthError(401, f"token claim {name} must be a string")
        return Listener(claims["sub"], claims["tier"], claims["territory"], claims["app"], int(claims["exp"]))


class TokenIssuer:
    """Signs listener tokens with the first key of a private JWK set."""

    def __init__(self, signing_keys: KeySet, ttl_s: int = DEFAULT_TTL_S) -> None:
        if not 60 <= ttl_s <= 86_400:
            raise SettingsError("the listener token lifetime must be 60 s to 24 h")
        self._key = signing_keys.keys[0]
        self.ttl_s = ttl_s
        self.public = KeySet([OKPKey.import_key(k.as_dict(private=False)) for k in signing_keys.keys])

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TokenIssuer:
        name = "ENTRAIN_TOKEN_SIGNING_KEYS"
        try:
            ttl = int(env.get("ENTRAIN_TOKEN_TTL_S", DEFAULT_TTL_S))
        except ValueError:
            raise SettingsError("ENTRAIN_TOKEN_TTL_S must be whole seconds") from None
        return cls(_key_set(secret_from_env(env, name), name, private=True), ttl)

    def verifier(self) -> TokenVerifier:
        return TokenVerifier(self.public)

    def issue(self, listener_id: str, tier: str, territory: str, app_id: str, now_s: float) -> tuple[str, int]:
        """A signed token and its expiry (epoch seconds)."""
        issued = int(now_s)
        expires = issued + self.ttl_s
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": listener_id, "tier": tier, "territory": territory,
                  "app": app_id, "iat": issued, "exp": expires, "jti": secrets.token_hex(12)}
        header = {"alg": ALGORITHM, "kid": self._key.kid, "typ": "JWT"}
        return jwt.encode(header, claims, self._key, algorithms=[ALGORITHM]), expires


def bearer_credential(authorization: str | None) -> str:
    """The credential of an ``Authorization: Bearer <credential>`` header; 401 when there is none."""
    scheme, _, credential = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        raise AuthError(401, "missing listener token: send Authorization: Bearer <token>; the app's backend "
                             "mints it with POST /v1/tokens on ingest")
    return credential.strip()


def _b64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))

"""Credentials for in-process tests: one listener-token key pair per test run, and tokens
minted with it exactly as ingest mints them."""

from __future__ import annotations

import time

from joserfc.jwk import KeySet

from kit.auth import Pseudonymizer
from kit.tokens import TokenIssuer, TokenVerifier, generate_key_set

PRIVATE_SET, PUBLIC_SET = generate_key_set("lt-test-1")
ISSUER = TokenIssuer(KeySet.import_key_set(PRIVATE_SET))
VERIFIER = TokenVerifier(KeySet.import_key_set(PUBLIC_SET))


def token_for(pseudonymizer: Pseudonymizer, user_id: str, tier: str = "PREMIUM", territory: str = "DE",
              app_id: str = "app", now_s: float | None = None, issuer: TokenIssuer = ISSUER) -> str:
    listener = pseudonymizer.listener_id(user_id)
    return issuer.issue(listener, tier, territory, app_id, time.time() if now_s is None else now_s)[0]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}

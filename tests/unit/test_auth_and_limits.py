from __future__ import annotations

import json

import pytest

from ingest.limits import DedupWindow
from kit.auth import AuthError, KeyFileError, KeyStore, Pseudonymizer, hash_key
from kit.ratelimit import RateLimiter, TokenBucket

APP, RH, ADMIN = "ek_app", "ek_rh", "ek_admin"
STORE = KeyStore.from_json(json.dumps([
    {"key_id": "app", "sha256": hash_key(APP), "scopes": ["listener-app"]},
    {"key_id": "rh7", "sha256": hash_key(RH), "scopes": ["rights-holder"], "rights_holder_id": "rh-7"},
    {"key_id": "ops", "sha256": hash_key(ADMIN), "scopes": ["admin"]},
]))


def test_keys_resolve_to_their_scopes() -> None:
    assert STORE.authenticate(f"Bearer {APP}").key_id == "app"
    STORE.authenticate(f"Bearer {APP}").require("listener-app")
    STORE.authenticate(f"bearer  {ADMIN}").require("listener-app")  # admin may do anything


@pytest.mark.parametrize(("header", "status", "reason"), [
    (None, 401, "missing API key"),
    ("", 401, "missing API key"),
    (f"Basic {APP}", 401, "malformed"),
    ("Bearer ", 401, "malformed"),
    ("Bearer ek_wrong", 401, "unknown API key"),
])
def test_missing_or_wrong_keys_are_401(header: str | None, status: int, reason: str) -> None:
    with pytest.raises(AuthError) as exc:
        STORE.authenticate(header)
    assert exc.value.status == status and reason in exc.value.reason


def test_scopes_and_ownership_are_403() -> None:
    with pytest.raises(AuthError) as exc:
        STORE.authenticate(f"Bearer {RH}").require("listener-app")
    assert exc.value.status == 403
    STORE.authenticate(f"Bearer {RH}").may_change_consent_of("rh-7")
    with pytest.raises(AuthError, match="may only change the consent of rh-7"):
        STORE.authenticate(f"Bearer {RH}").may_change_consent_of("rh-8")
    with pytest.raises(AuthError, match="lacks the rights-holder scope"):
        STORE.authenticate(f"Bearer {APP}").may_change_consent_of("rh-7")
    STORE.authenticate(f"Bearer {ADMIN}").may_change_consent_of("rh-8")


@pytest.mark.parametrize(("text", "reason"), [
    ("not json", "not valid JSON"),
    ("[]", "non-empty JSON list"),
    ('[{"key_id": "a"}]', "needs key_id, sha256 and scopes"),
    ('[{"key_id": "a", "sha256": "' + "0" * 64 + '", "scopes": ["root"]}]', "scopes must be among"),
    ('[{"key_id": "a", "sha256": "' + "0" * 64 + '", "scopes": ["rights-holder"]}]', "needs rights_holder_id"),
    ('[{"key_id": "a", "sha256": "abc", "scopes": ["admin"]}]', "64 hex digits"),
])
def test_malformed_key_files_are_refused_clearly(text: str, reason: str) -> None:
    with pytest.raises(KeyFileError, match=reason):
        KeyStore.from_json(text)


def test_pseudonyms_are_stable_keyed_and_hide_the_id() -> None:
    a, b = Pseudonymizer(b"k" * 32), Pseudonymizer(b"j" * 32)
    assert a.listener_id("alice") == a.listener_id("alice")
    assert a.listener_id("alice") != b.listener_id("alice")
    assert a.listener_id("alice") != a.listener_id("alicf")
    assert "alice" not in a.listener_id("alice") and len(a.listener_id("alice")) == 64
    with pytest.raises(ValueError, match="at least 32 bytes"):
        Pseudonymizer(b"short")


def test_dedup_window_forgets_after_the_window() -> None:
    window = DedupWindow(window_ms=1000)
    window.remember("e1", now_ms=0)
    assert window.seen("e1", now_ms=999)
    assert not window.seen("e2", now_ms=999)
    assert not window.seen("e1", now_ms=1001)


def test_dedup_window_is_bounded() -> None:
    window = DedupWindow(window_ms=10**9, max_ids=2)
    for n, event in enumerate(["a", "b", "c"]):
        window.remember(event, n)
    assert not window.seen("a", 3) and window.seen("b", 3) and window.seen("c", 3)


def test_token_bucket_allows_bursts_then_the_rate() -> None:
    bucket = TokenBucket(rate=100, burst=200)
    assert bucket.take(200, now_ms=0) == 0
    assert bucket.take(50, now_ms=0) == pytest.approx(0.5)
    assert bucket.take(50, now_ms=500) == 0
    limiter = RateLimiter(rate=10, burst=10)
    assert limiter.take("a", 10, 0) == 0 and limiter.take("b", 10, 0) == 0  # per key
    assert limiter.take("a", 1, 0) > 0


def test_idle_buckets_are_swept_so_state_stays_bounded() -> None:
    limiter = RateLimiter(rate=1, burst=5, sweep_every=100)
    for n in range(1000):  # a flood of distinct keys, each used once
        limiter.take(f"listener-{n}", 1, now_ms=n * 10)
    assert limiter.keys_held <= 600  # only keys seen within one refill time (5 s = 500 keys) plus one sweep period
    limiter.take("busy", 5, now_ms=20_000)
    assert limiter.sweep(now_ms=20_000) > 0 and limiter.keys_held == 1  # the drained bucket is kept
    assert limiter.take("busy", 1, now_ms=20_000) > 0  # and still limits


def test_listener_tokens_round_trip_and_refuse_what_they_must() -> None:
    import json

    from joserfc.jwk import KeySet

    from kit.settings import SettingsError
    from kit.tokens import TokenIssuer, TokenVerifier, generate_key_set

    private, public = generate_key_set("k-old")
    private_new, public_new = generate_key_set("k-new")
    old = TokenIssuer(KeySet.import_key_set(private), ttl_s=600)
    token, expires = old.issue("l" * 64, "FREE", "SE", "app-1", now_s=1_000_000)
    assert expires == 1_000_600
    # Rotation: a verifier holding both public keys accepts tokens of either while they live.
    both = TokenVerifier(KeySet.import_key_set({"keys": public["keys"] + public_new["keys"]}))
    listener = both.verify(token, now_s=1_000_100)
    assert (listener.listener_id, listener.subscription_tier, listener.territory, listener.app_id) == (
        "l" * 64, "FREE", "SE", "app-1")
    new_token, _ = TokenIssuer(KeySet.import_key_set(private_new)).issue("m" * 64, "PREMIUM", "DE", "a", 1_000_000)
    assert both.verify(new_token, 1_000_100).listener_id == "m" * 64
    only_old = TokenVerifier(KeySet.import_key_set(public))
    for bad, now, reason in [(token, 1_000_700, "expired"), (new_token, 1_000_100, "unknown key id"),
                             (token[:-2] + "xx", 1_000_100, "signature"), ("a.b", 0, "not a listener token")]:
        with pytest.raises(AuthError, match=reason) as caught:
            only_old.verify(bad, now)
        assert caught.value.status == 401
    with pytest.raises(SettingsError, match="public keys only"):
        TokenVerifier.from_env({"ENTRAIN_TOKEN_PUBLIC_KEYS": json.dumps(private)})
    with pytest.raises(SettingsError, match="needs private keys"):
        TokenIssuer.from_env({"ENTRAIN_TOKEN_SIGNING_KEYS": json.dumps(public)})
    with pytest.raises(SettingsError, match="not a JWK set"):
        TokenIssuer.from_env({"ENTRAIN_TOKEN_SIGNING_KEYS": "[]"})


def test_a_verified_token_is_remembered_until_it_expires() -> None:
    from joserfc.jwk import KeySet

    from kit.tokens import TokenIssuer, TokenVerifier, generate_key_set

    private, public = generate_key_set("k")
    token, expires = TokenIssuer(KeySet.import_key_set(private), ttl_s=600).issue("l" * 64, "FREE", "SE", "a", 1000)
    verifier = TokenVerifier(KeySet.import_key_set(public), clock_skew_s=0, cache_size=2)
    assert verifier.verify(token, 1100) is verifier.verify(token, 1200)  # the second answer comes from memory
    with pytest.raises(AuthError, match="expired"):
        verifier.verify(token, expires + 1)  # remembered or not, an expired token is refused
    for n in range(3):  # the memory is bounded
        verifier.verify(TokenIssuer(KeySet.import_key_set(private)).issue(str(n) * 64, "FREE", "SE", "a", 1000)[0],
                        1100)
    assert len(verifier._verified) == 2

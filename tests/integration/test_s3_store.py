"""The S3 segment store against the real S3-compatible server `make test` starts (s3proxy):
content-addressed, checked on read, idempotent, first write of a name wins."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from typing import Any

import obstore
import pytest

from kit.store import S3Store, StoreError, store_from_env
from tests.pipeline import s3_env


@pytest.fixture
def env() -> dict[str, str]:
    return s3_env(f"test-store-{secrets.token_hex(4)}")


def test_objects_are_content_addressed_checked_and_written_once(env: dict[str, str]) -> None:
    store = store_from_env(env)
    assert isinstance(store, S3Store)
    data = secrets.token_bytes(200_000)
    uri, digest = store.put(data, "wav")
    assert digest == hashlib.sha256(data).hexdigest()
    assert uri == f"{env['ENTRAIN_SEGMENT_STORE']}/{digest[:2]}/{digest}.wav"
    assert store.put(data, "wav") == (uri, digest)  # idempotent
    assert store.get(uri) == store.get_content(digest, "wav") == data
    with pytest.raises(StoreError, match="does not exist"):
        store.get_content("0" * 64, "wav")
    with pytest.raises(StoreError, match="not in this store"):
        store.get("s3://another-bucket/x/" + digest[:2] + "/" + digest + ".wav")
    # an object whose bytes are not what its name says (torn, tampered, a bug) is refused
    obstore.put(store._store, f"{digest[:2]}/{digest}.m4s", b"something else")
    with pytest.raises(StoreError, match="do not hash to their name"):
        store.get_content(digest, "m4s")


def test_a_refreshing_put_restarts_an_objects_age(env: dict[str, str]) -> None:
    store = store_from_env(env)
    assert isinstance(store, S3Store)
    _, digest = store.put(b"init segment", "mp4")
    key = f"{digest[:2]}/{digest}.mp4"
    first = obstore.head(store._store, key)["last_modified"]
    time.sleep(1.1)  # Last-Modified has one-second resolution
    store.put(b"init segment", "mp4")
    assert obstore.head(store._store, key)["last_modified"] == first  # idempotent: not rewritten
    store.put(b"init segment", "mp4", refresh=True)
    assert obstore.head(store._store, key)["last_modified"] > first
    assert store.get_content(digest, "mp4") == b"init segment"


def test_the_first_write_of_a_name_wins_among_concurrent_writers(env: dict[str, str]) -> None:
    store = store_from_env(env)
    assert store.get_named("rendition-seg-1.json") is None
    results: list[Any] = [None] * 8
    start = threading.Barrier(8)

    def write(n: int) -> None:
        start.wait()
        results[n] = store.put_once("rendition-seg-1.json", f"writer {n}".encode())

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and results[0] == store.get_named("rendition-seg-1.json")
    with pytest.raises(StoreError, match="not a valid record name"):
        store.put_once("../escape", b"x")


def test_wrong_credentials_are_an_error_not_a_missing_object(env: dict[str, str]) -> None:
    if "AWS_SECRET_ACCESS_KEY" not in env:
        pytest.skip("the configured server's credentials come from the environment")
    store = store_from_env({**env, "AWS_SECRET_ACCESS_KEY": "wrong"})
    with pytest.raises(Exception) as raised:
        store.put(b"x", "wav")
    message = str(raised.value)
    assert not isinstance(raised.value, StoreError) and ("403" in message or "denied" in message.lower()), message

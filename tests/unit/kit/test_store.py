"""The filesystem segment store (the S3 one: tests/integration/test_s3_store.py, on a real server)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from kit.store import FileStore, StoreError


def test_objects_are_content_addressed_checked_and_written_once(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    uri, digest = store.put(b"audio", "wav")
    assert digest == hashlib.sha256(b"audio").hexdigest() and uri.endswith(f"/{digest[:2]}/{digest}.wav")
    assert store.put(b"audio", "wav") == (uri, digest)
    assert store.get(uri) == store.get_content(digest, "wav") == b"audio"
    (tmp_path / digest[:2] / f"{digest}.m4s").write_bytes(b"other")
    with pytest.raises(StoreError, match="do not hash to their name"):
        store.get_content(digest, "m4s")
    with pytest.raises(StoreError, match="not in this store"):
        store.get((tmp_path.parent / "elsewhere.wav").as_uri())
    assert store.put_once("rendition-a", b"first") == b"first"
    assert store.put_once("rendition-a", b"second") == b"first"
    assert store.get_named("rendition-a") == b"first" and store.get_named("rendition-b") is None


def test_a_refreshing_put_restarts_an_objects_age(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    _, digest = store.put(b"init", "mp4")
    path = tmp_path / digest[:2] / f"{digest}.mp4"
    os.utime(path, (1_000_000, 1_000_000))  # written long ago
    store.put(b"init", "mp4")
    assert path.stat().st_mtime == 1_000_000
    store.put(b"init", "mp4", refresh=True)
    assert path.stat().st_mtime > 1_000_000 and store.get_content(digest, "mp4") == b"init"

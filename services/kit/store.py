"""Where segment audio lives: content-addressed objects on a filesystem or in an S3 bucket.

``SegmentStore`` is the interface the services use: put bytes, get bytes by URI or by digest
(content-addressed, the SHA-256 checked on every read), and named records written once
(``put_once``/``get_named``: the first write of a name wins, later ones get the first one's bytes
back; inference's generation log and watermark's rendition records).

``store_from_env()`` picks the store from ``ENTRAIN_SEGMENT_STORE``:

- a path (default ``.state/segments``): ``FileStore``, ``<root>/<sha[:2]>/<sha>.<ext>`` and
  ``<root>/named/<name>``, ``file://`` URIs. The embedded default (`make demo`); every service
  that uses it must share the filesystem.
- ``s3://bucket/prefix``: ``S3Store`` (obstore, i.e. the Rust ``object_store`` crate): the same
  layout under the prefix, ``s3://`` URIs, writes conditional on the key being absent
  (``If-None-Match: *``), so the first writer of a name wins on S3 as on disk. Endpoint, region
  and credentials come from the standard ``AWS_ENDPOINT_URL``, ``AWS_REGION``,
  ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY`` (or an instance/pod role on AWS).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from kit.settings import STATE_DIR


class SegmentStore(Protocol):
    def put(self, data: bytes, extension: str, refresh: bool = False) -> tuple[str, str]: ...
    def get(self, uri: str) -> bytes: ...
    def get_content(self, sha256: str, extension: str) -> bytes: ...
    def put_once(self, name: str, data: bytes) -> bytes: ...
    def get_named(self, name: str) -> bytes | None: ...


class StoreError(LookupError):
    """A URI does not name an object in this store, or the object's bytes are not what its name says."""


def content_key(digest: str, extension: str) -> str:
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest) or not extension.isalnum():
        raise StoreError(f"{digest}.{extension} is not a content address")
    return f"{digest[:2]}/{digest}.{extension}"


def named_key(name: str) -> str:
    if not name or not all(c.isascii() and (c.isalnum() or c in "-_.") for c in name) or name.startswith("."):
        raise StoreError(f"{name!r} is not a valid record name")
    return f"named/{name[:2]}/{name}"


def checked(data: bytes, key: str) -> bytes:
    """``data`` if its SHA-256 is the one its content key names (a torn or tampered object is refused)."""
    digest = key.rsplit("/", 1)[-1].split(".", 1)[0]
    if hashlib.sha256(data).hexdigest() != digest:
        raise StoreError(f"{key}: the stored bytes do not hash to their name")
    return data


class FileStore:
    def __init__(self, root: Path | None = None) -> None:
        self.root = (root or Path(os.environ.get("ENTRAIN_SEGMENT_STORE", STATE_DIR / "segments"))).resolve()

    def put(self, data: bytes, extension: str, refresh: bool = False) -> tuple[str, str]:
        """Store bytes under their SHA-256; returns (uri, sha256). Idempotent. ``refresh``: an object
        already there is made new again (its age restarts, so a retention rule keeps it)."""
        digest = hashlib.sha256(data).hexdigest()
        path = self.root / content_key(digest, extension)
        if path.exists() and refresh:
            os.utime(path)
        elif not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(data)
            tmp.replace(path)  # atomic: readers never see a partial file
        return path.as_uri(), digest

    def get(self, uri: str) -> bytes:
        parsed = urlparse(uri)
        path = Path(parsed.path).resolve()
        if parsed.scheme != "file" or self.root not in path.parents:
            raise StoreError(f"{uri} is not in this store ({self.root})")
        return self._read(path.relative_to(self.root).as_posix())

    def get_content(self, sha256: str, extension: str) -> bytes:
        return self._read(content_key(sha256, extension))

    def _read(self, key: str) -> bytes:
        try:
            return checked((self.root / key).read_bytes(), key)
        except FileNotFoundError:
            raise StoreError(f"{key} does not exist") from None

    def put_once(self, name: str, data: bytes) -> bytes:
        """Write ``data`` under ``name`` unless something is there already; returns what is stored
        (``data``, or the first writer's bytes). Atomic: a reader never sees a partial record."""
        path = self.root / named_key(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        tmp.write_bytes(data)
        try:
            os.link(tmp, path)  # fails if the name exists: the first write wins
        except FileExistsError:
            return path.read_bytes()
        finally:
            tmp.unlink()
        return data

    def get_named(self, name: str) -> bytes | None:
        try:
            return (self.root / named_key(name)).read_bytes()
        except FileNotFoundError:
            return None


class S3Store:
    """The same store in an S3 bucket (any S3-compatible server: AWS, s3proxy, SeaweedFS, Ceph RGW)."""

    def __init__(self, url: str, env: Mapping[str, str] | None = None) -> None:
        from obstore.store import S3Store as ObjectStore

        env = os.environ if env is None else env
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"ENTRAIN_SEGMENT_STORE={url!r}: expected s3://bucket/prefix")
        self.bucket, self.prefix = parsed.netloc, parsed.path.strip("/")
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
        config: dict[str, str] = {"region": env.get("AWS_REGION", env.get("AWS_DEFAULT_REGION", "us-east-1"))}
        if endpoint:
            config["endpoint"] = endpoint
            config["virtual_hosted_style_request"] = "false"  # most S3-compatible servers want path style
        for name, option in (("AWS_ACCESS_KEY_ID", "access_key_id"), ("AWS_SECRET_ACCESS_KEY", "secret_access_key"),
                             ("AWS_SESSION_TOKEN", "token")):
            if env.get(name):
                config[option] = env[name]
        self._store = ObjectStore(self.bucket, prefix=self.prefix or None, config=config,  # type: ignore[arg-type]
                                  client_options={"allow_http": bool(endpoint and endpoint.startswith("http://")),
                                                  "timeout": "30s", "connect_timeout": "5s"},
                                  retry_config={"max_retries": 5, "retry_timeout": timedelta(seconds=30),
                                                "backoff": {"init_backoff": timedelta(milliseconds=100),
                                                            "max_backoff": timedelta(seconds=2), "base": 2}})

    def _uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}/{key}" if self.prefix else f"s3://{self.bucket}/{key}"

    def _create(self, key: str, data: bytes) -> bool:
        """Write unless the key exists; whether this call wrote it."""
        import obstore

        try:
            obstore.put(self._store, key, data, mode="create")
            return True
        except obstore.exceptions.AlreadyExistsError:
            return False

    def _read(self, key: str) -> bytes | None:
        import obstore

        try:
            return bytes(obstore.get(self._store, key).bytes())
        except FileNotFoundError:
            return None

    def put(self, data: bytes, extension: str, refresh: bool = False) -> tuple[str, str]:
        import obstore

        digest = hashlib.sha256(data).hexdigest()
        key = content_key(digest, extension)
        if refresh:  # rewritten: the same bytes, a new Last-Modified (a lifecycle rule counts from it)
            obstore.put(self._store, key, data, mode="overwrite")
        else:
            self._create(key, data)  # already there: the same bytes (the key is their hash)
        return self._uri(key), digest

    def get(self, uri: str) -> bytes:
        root = self._uri("")
        if not uri.startswith(root) or ".." in uri:
            raise StoreError(f"{uri} is not in this store ({root})")
        key = uri.removeprefix(root)
        data = self._read(key)
        if data is None:
            raise StoreError(f"{uri} does not exist")
        return checked(data, key)

    def get_content(self, sha256: str, extension: str) -> bytes:
        return self.get(self._uri(content_key(sha256, extension)))

    def put_once(self, name: str, data: bytes) -> bytes:
        key = named_key(name)
        if self._create(key, data):
            return data
        stored = self._read(key)
        return data if stored is None else stored  # None: deleted since (a lifecycle rule); ours stands

    def get_named(self, name: str) -> bytes | None:
        return self._read(named_key(name))


def store_from_env(env: Mapping[str, str] | None = None) -> FileStore | S3Store:
    """The store ``ENTRAIN_SEGMENT_STORE`` names: ``s3://bucket/prefix`` or a directory (the default)."""
    env = os.environ if env is None else env
    where = env.get("ENTRAIN_SEGMENT_STORE", "")
    if where.startswith("s3://"):
        return S3Store(where, env)
    return FileStore(Path(where.removeprefix("file://")) if where else None)

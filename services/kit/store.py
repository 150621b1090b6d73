"""Where segment audio lives: content-addressed files by default.

``SegmentStore`` is the interface the services use: put bytes, get bytes by URI
(content-addressed), and named records written once (``put_once``/``get_named``: the
first write of a name wins, later ones get the first one's bytes back; inference's
generation log). The file store keeps ``<root>/<sha[:2]>/<sha>.<ext>`` and
``<root>/named/<name>`` and returns ``file://`` URIs. An S3 store would implement the
same methods with ``s3://bucket/...`` URIs and conditional writes (If-None-Match).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from kit.settings import STATE_DIR


class SegmentStore(Protocol):
    def put(self, data: bytes, extension: str) -> tuple[str, str]: ...
    def get(self, uri: str) -> bytes: ...
    def put_once(self, name: str, data: bytes) -> bytes: ...
    def get_named(self, name: str) -> bytes | None: ...


class StoreError(LookupError):
    """A URI does not name an object in this store."""


class FileStore:
    def __init__(self, root: Path | None = None) -> None:
        self.root = (root or Path(os.environ.get("ENTRAIN_SEGMENT_STORE", STATE_DIR / "segments"))).resolve()

    def put(self, data: bytes, extension: str) -> tuple[str, str]:
        """Store bytes under their SHA-256; returns (uri, sha256). Idempotent."""
        digest = hashlib.sha256(data).hexdigest()
        path = self.root / digest[:2] / f"{digest}.{extension}"
        if not path.exists():
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
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise StoreError(f"{uri} does not exist") from None

    def _named(self, name: str) -> Path:
        if not name or not all(c.isascii() and (c.isalnum() or c in "-_.") for c in name) or name.startswith("."):
            raise StoreError(f"{name!r} is not a valid record name")
        return self.root / "named" / name[:2] / name

    def put_once(self, name: str, data: bytes) -> bytes:
        """Write ``data`` under ``name`` unless something is there already; returns what is stored
        (``data``, or the first writer's bytes). Atomic: a reader never sees a partial record."""
        path = self._named(name)
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
            return self._named(name).read_bytes()
        except FileNotFoundError:
            return None

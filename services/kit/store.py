"""Where segment audio lives: content-addressed files by default.

``SegmentStore`` is the interface the services use (put bytes, get bytes by URI); the
file store keeps ``<root>/<sha[:2]>/<sha>.<ext>`` and returns ``file://`` URIs. An S3
store would implement the same two methods with ``s3://bucket/<sha>.<ext>`` URIs.
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

"""Generation records by watermark payload, so a detection can name its segment and provenance.

SQLite at ``ENTRAIN_WATERMARK_REGISTRY`` (default .state/watermark/registry.sqlite). The
watermark service writes a row per verified segment; the detector only reads. In a
cluster this would be a compacted topic or a database table; the interface is the same.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

from kit.settings import STATE_DIR

DEFAULT_PATH = STATE_DIR / "watermark" / "registry.sqlite"


class Registry:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or Path(os.environ.get("ENTRAIN_WATERMARK_REGISTRY", DEFAULT_PATH))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS segments (key_id TEXT, payload_hex TEXT, segment_id TEXT, "
                         "record TEXT, PRIMARY KEY (key_id, payload_hex, segment_id))")

    def add(self, key_id: str, payload_hex: str, segment_id: str, record: dict[str, Any]) -> None:
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO segments VALUES (?, ?, ?, ?)",
                             (key_id, payload_hex, segment_id, json.dumps(record, sort_keys=True)))

    def lookup(self, key_id: str, payload_hex: str) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT record FROM segments WHERE key_id = ? AND payload_hex = ?",
                                (key_id, payload_hex)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM segments").fetchone()[0])

    def close(self) -> None:
        self._db.close()

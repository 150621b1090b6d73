"""Run ingest: ``python -m ingest`` (settings from the environment, see the README)."""

from __future__ import annotations

import os

import uvicorn

from ingest.settings import IngestSettings
from kit.settings import SettingsError


def main() -> None:
    try:
        settings = IngestSettings.from_env()  # fail fast, before forking workers
    except (SettingsError, ValueError) as exc:
        raise SystemExit(f"ingest: {exc}") from None
    uvicorn.run(
        "ingest.app:app_from_env", factory=True, host=settings.host, port=settings.port,
        workers=int(os.environ.get("ENTRAIN_INGEST_WORKERS", "1")), log_level="warning", access_log=False,
        limit_concurrency=int(os.environ.get("ENTRAIN_INGEST_MAX_CONNECTIONS", "1000")),
    )


if __name__ == "__main__":
    main()

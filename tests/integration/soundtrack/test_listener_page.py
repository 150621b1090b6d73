"""The listener page end to end in headless Chromium, against the whole pipeline on the real
broker: the page posts telemetry through ingest, plays the watermarked segments it gets from
delivery, and after a heart-rate/cadence change fetches and plays segments at a faster tempo."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from tests.pipeline import Pipeline

from kit.settings import REPO_ROOT, KafkaSettings

BROWSER_DIR = REPO_ROOT / "tests" / "browser"


def test_the_page_speeds_up_after_a_heart_rate_change(isolated: KafkaSettings, tmp_path: Path) -> None:
    if not (BROWSER_DIR / "node_modules" / "playwright-core").exists() or not shutil.which("chromium"):
        pytest.fail("playwright-core or chromium missing: `make test` installs both")
    pipeline = Pipeline(isolated, tmp_path).start()
    try:
        # The test is the app's backend: it mints the listener token with its app key and opens the page with it.
        url = f"{pipeline.delivery_url}/#token={pipeline.token('browser-test')}&ingest={pipeline.ingest_url}"
        run = subprocess.run(["node", str(BROWSER_DIR / "listener_page.mjs"), url, "150"], cwd=BROWSER_DIR,
                             capture_output=True, text=True, timeout=240)
        assert run.stdout.strip(), run.stderr
        result = json.loads(run.stdout.strip().splitlines()[-1])
        print(result)  # seconds from the change to faster playback, underruns: visible with -s
        assert result["ok"], (result, run.stderr[-2000:], pipeline.log("soundtrack")[-1500:])
        assert result["new_tempo"] >= result["rest_tempo"] * 1.05
        assert float(result["shown_tempo"]) >= result["new_tempo"] - 0.05  # the page shows what it plays
    finally:
        pipeline.stop()

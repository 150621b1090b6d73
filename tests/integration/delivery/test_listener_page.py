"""The listener page end to end in headless Chromium, against the whole pipeline on the real
broker: the page posts telemetry through ingest, plays the watermarked segments it gets from
delivery, and after a heart-rate/cadence change fetches and plays segments at a faster tempo."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

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
        check_export_and_erasure(pipeline)
    finally:
        pipeline.stop()


def get(url: str, token: str) -> dict[str, Any]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return dict(json.loads(response.read()))


def check_export_and_erasure(pipeline: Pipeline) -> None:
    """The listener's export, from the services as they run: telemetry the page posted, the Faust
    worker's requests (aiokafka's partitioner) and state (its changelog), the segments; after an
    erasure the state and the playlist are gone (records on delete-policy topics expire)."""
    token = pipeline.token("browser-test")
    body = get(f"{pipeline.delivery_url}/v1/me/export", token)
    topics = body["topics"]
    for topic in ("listener.telemetry.v1", "soundtrack.requests.v1", "soundtrack.segments.v1"):
        assert topics[topic]["records"], (topic, {t: len(v["records"]) for t, v in topics.items()})
        assert {r["listener_id"] for r in topics[topic]["records"]} == {body["listener_id"]}
    assert body["soundtrack_state"] is not None and body["delivery_playlist"]["segment_ids"]
    request = urllib.request.Request(f"{pipeline.ingest_url}/v1/erasures", data=b"", method="POST",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 202
    deadline = time.monotonic() + 60  # delivery drops the playlist (not rate-limited: poll it)
    while get(f"{pipeline.delivery_url}/v1/playlist", token)["segments"] and time.monotonic() < deadline:
        time.sleep(1)
    deadline = time.monotonic() + 150  # exports: one a minute (burst two), so at most three more tries
    after: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            after = get(f"{pipeline.delivery_url}/v1/me/export", token)
        except urllib.error.HTTPError as exc:
            if exc.code != 429:
                raise
            time.sleep(10)
            continue
        if after["soundtrack_state"] is None and not after["delivery_playlist"]["segment_ids"]:
            assert after["topics"]["listener.erasures.v1"]["records"]  # the request itself is listed
            return
        time.sleep(10)
    raise AssertionError(f"state or playlist still held after the erasure: {after.get('soundtrack_state')}, "
                         f"{after.get('delivery_playlist')}")

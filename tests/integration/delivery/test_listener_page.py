"""The listener page end to end in headless Chromium, against the whole pipeline on the real
broker: the page posts telemetry through ingest, plays the watermarked segments it gets from
delivery, follows a step up from rest to a run (cadence 170) and down to a walk (105), and the
test measures from the audio the page played when the change was heard (tests.hearing): the
figures bench-adapt reports for its simulated players, here for the real page, printed at the
end of the run (FIGURES ...).

This is the pipeline's run on the S3 segment store (the local s3proxy), and the media path's
real-player check: the page plays the AAC renditions through its Web Audio scheduler, a second
tab plays the live HLS playlist with hls.js, and meanwhile ``ffmpeg -i <playlist URL>`` (the
listener's token in its request headers) decodes 20 s of the running session."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.hearing import Played, audible, track_beats
from tests.pipeline import Pipeline

from kit import media
from kit.audio import encode_wav
from kit.settings import REPO_ROOT, KafkaSettings

BROWSER_DIR = REPO_ROOT / "tests" / "browser"


def test_the_page_follows_a_run_and_a_walk(isolated: KafkaSettings, tmp_path: Path,
                                           record_property: Any) -> None:
    if not (BROWSER_DIR / "node_modules" / "playwright-core").exists() or not shutil.which("chromium"):
        pytest.fail("playwright-core or chromium missing: `make test` installs both")
    pipeline = Pipeline(isolated, tmp_path, s3=True).start()
    try:
        # The test is the app's backend: it mints the listener token with its app key and opens the page with it.
        url = f"{pipeline.delivery_url}/#token={pipeline.token('browser-test')}&ingest={pipeline.ingest_url}"
        decoded: dict[str, Any] = {}
        ffmpeg = threading.Thread(target=decode_live_playlist, args=(pipeline, decoded), daemon=True)
        ffmpeg.start()
        run = subprocess.run(["node", str(BROWSER_DIR / "listener_page.mjs"), url, "200"], cwd=BROWSER_DIR,
                             capture_output=True, text=True, timeout=300)
        assert run.stdout.strip(), run.stderr
        result = json.loads(run.stdout.strip().splitlines()[-1])
        assert result["ok"], (result, run.stderr[-2000:], pipeline.log("soundtrack")[-1500:])
        assert {p["format"] for p in result["played"]} == {"aac"}, [p["format"] for p in result["played"]]
        hls = result["hls"]
        assert hls["supported"] and hls["played_s"] >= 20 and hls["fragments"] >= 5, hls
        assert not [e for e in hls["errors"] if e["fatal"]], hls
        ffmpeg.join(timeout=60)
        assert decoded and not decoded["ended_early"] and not decoded["stderr"], decoded
        assert decoded["seconds"] >= 20 and decoded["rms"] > 1e-3, decoded  # 20 s of music, not silence
        assert result["up"]["target_tempo"] >= result["rest_tempo"] * 1.05
        assert float(result["shown_tempo"]) == pytest.approx(result["last_played_tempo"], abs=0.05)  # shows what plays
        figures = {**heard(pipeline, result), "hls_js_played_s": round(hls["played_s"], 1),
                   "hls_js_fragments": hls["fragments"], "ffmpeg_decoded_s": round(decoded["seconds"], 1)}
        # the page played both steps (its metadata said so); the audio must say so too
        assert None not in (figures["audible_converged_up_s"], figures["audible_converged_down_s"]), figures
        figures["rendition_segments_named"] = check_the_delivered_rendition_names_its_segments(pipeline)
        record_property("figures", figures)
        check_export_and_erasure(pipeline)
    finally:
        pipeline.stop()


def decode_live_playlist(pipeline: Pipeline, out: dict[str, Any]) -> None:
    """Once the session has three segments: ffmpeg plays the live HLS playlist from its first
    segment (the token in the request headers, as a player's backend would pass it) and decodes 20 s."""
    token = pipeline.token("browser-test")
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        try:
            if sum(1 for s in get(f"{pipeline.delivery_url}/v1/playlist", token)["segments"] if s["rendition"]) >= 3:
                break
        except urllib.error.URLError:
            pass
        time.sleep(1)
    # Samples are counted, not timestamps (ffmpeg's -t): where the stream breaks (a fragment encoded
    # after a replanned predecessor, EXT-X-DISCONTINUITY) the media timeline may jump.
    want = 20 * 44_100 * 2 * 4
    player = subprocess.Popen(["ffmpeg", "-nostdin", "-v", "error", "-headers", f"Authorization: Bearer {token}\r\n",
                               "-live_start_index", "0", "-i", f"{pipeline.delivery_url}/v1/playlist.m3u8",
                               "-f", "f32le", "-ac", "2", "-ar", "44100", "-"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert player.stdout is not None and player.stderr is not None
    data = bytearray()
    deadline = time.monotonic() + 120
    while len(data) < want and time.monotonic() < deadline:
        chunk = player.stdout.read1(65536)
        if not chunk:
            break  # ffmpeg ended
        data += chunk
    player.terminate()
    _, errors = player.communicate(timeout=30)
    audio = np.frombuffer(bytes(data[:len(data) // 4 * 4]), np.float32)
    out.update(ended_early=len(data) < want, stderr=errors.decode(errors="replace")[-2000:],
               seconds=len(audio) / 2 / 44_100, rms=float(np.sqrt(np.mean(audio**2))) if len(audio) else 0.0)


def heard(pipeline: Pipeline, result: dict[str, Any]) -> dict[str, Any]:
    """The page's audible response to each step, from the audio it played (fetched again from its
    signed URLs), beat by beat: seconds from the first sample sent in the new state."""
    token = pipeline.token("browser-test")
    played = []
    for p in result["played"]:
        request = urllib.request.Request(f"{pipeline.delivery_url}{p['url']}",
                                         headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            played.append(Played(int(p["start_ms"]), int(p["duration_ms"]), response.read(), p["params"]))
    misreads = track_beats(played)
    up, down = result["up"], result["down"]
    first_up, converged_up = audible(played, up["changed_at_ms"], down["changed_at_ms"], up["target_tempo"])
    first_down, converged_down = audible(played, down["changed_at_ms"], 2**62, down["target_tempo"])
    seconds = {"audible_first_up_s": first_up, "audible_converged_up_s": converged_up,
               "audible_first_down_s": first_down, "audible_converged_down_s": converged_down}
    return {**{k: None if v is None else round(v, 2) for k, v in seconds.items()},
            "rest_tempo": result["rest_tempo"], "segments_played": len(played), "tempo_misreads": misreads,
            "underruns": result["underruns"], "swaps": result["swaps"]}


def get(url: str, token: str) -> dict[str, Any]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return dict(json.loads(response.read()))


def check_the_delivered_rendition_names_its_segments(pipeline: Pipeline) -> int:
    """The watermark on what a listener receives: the session's AAC fragments as HLS lists them,
    downloaded by their signed URLs, joined as a player decodes them, sent to the public detector
    (any Entrain key): it names every one of the session's segments with its provenance and nothing
    else. Returns how many it named."""
    token = pipeline.token("browser-test")
    listed = [s for s in get(f"{pipeline.delivery_url}/v1/playlist", token)["segments"] if s["rendition"]]
    assert len(listed) >= 5, listed

    def fetch(url: str) -> bytes:
        with urllib.request.urlopen(f"{pipeline.delivery_url}{url}", timeout=30) as response:
            return bytes(response.read())

    audio, _ = media.decode(fetch(listed[0]["rendition"]["init_url"]), [fetch(s["rendition"]["url"]) for s in listed])
    request = urllib.request.Request(f"http://127.0.0.1:{pipeline.ports['detect']}/v1/detect",
                                     data=encode_wav(audio, media.SAMPLE_RATE, "PCM_16"),
                                     headers={"Authorization": f"Bearer {pipeline.app_key}"})
    with urllib.request.urlopen(request, timeout=120) as response:
        found = json.loads(response.read())
    named = {h["segment_id"]: h for h in found["segments"] if h["segment_id"]}
    ids = {s["segment_id"] for s in listed}
    assert set(named) <= ids and all(h["provenance"]["segment_id"] == i for i, h in named.items()), found
    missing = sorted(ids - set(named))
    assert not missing, (missing, len(listed), found["segments"])
    return len(named)


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

"""make demo: the whole platform on this machine, driven by a simulated cohort of listeners.

Starts the services (Kafka and the topics were made ready by make), seeds AI-generation
consent for the demo rights holders through ingest's admin API (consent is opt-in), then
drives N listeners through warm-up -> run -> cool-down for about two minutes. The demo is
the app's backend: it mints one listener token per listener with the app key
(POST /v1/tokens), and each simulated device sends with its own token: telemetry through
ingest every 2 s, a play through ingest for every segment a listener heard, and
one rights holder withdrawing AI-generation consent half way. At the end it writes, into
artifacts/demo/: one listener's continuous soundtrack (WAV and MP3), a plot of heart rate
and cadence against the soundtrack tempo, a watermark summary, the royalty statement and
what this run's plays paid per listener-minute and to whom (royalties.json), and prints the
listener page's URL. Ctrl-C stops everything (services and the local broker).

Usage: python deploy/local/demo.py [--listeners 20] [--seconds 120] [--out artifacts/demo]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inference.catalog import ConsentSnapshot, load_catalog
from kit.auth import listener_play_id
from kit.serde import DecodeError
from kit.settings import REPO_ROOT, STATE_DIR, KafkaSettings
from kit.tokens import TokenVerifier
from royalty.rates import RateCard
from royalty.statement import decimal, read_committed

INGEST = "http://127.0.0.1:8080"
DELIVERY = "http://127.0.0.1:8085"
WITHDRAWING_HOLDER = "rh-demo-0007"  # the dev rights-holder key belongs to it


def dev_keys() -> dict[str, str]:
    lines = (STATE_DIR / "ingest" / "dev-keys.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def call(method: str, url: str, key: str, body: Any = None, timeout: float = 15) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={  # noqa: S310 (loopback only)
        "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{method} {url}: HTTP {exc.code} {exc.read().decode(errors='replace')}") from None


# --- the cohort ------------------------------------------------------------------------

@dataclass
class Listener:
    index: int
    run_cadence: float
    rest_hr: float
    max_hr: float
    session_id: str
    jitter_s: float
    heard: set[str] = field(default_factory=set)
    trace: list[tuple[float, int | None, int | None, str]] = field(default_factory=list)

    @property
    def user_id(self) -> str:
        return f"demo-listener-{self.index:02d}"

    def body(self, t: float, total: float) -> tuple[int, int | None, str]:
        """Heart rate, cadence and activity at t seconds: warm-up, run, cool-down."""
        x = (t + self.jitter_s) / total
        rng = random.Random(hash((self.index, int(t))))
        if x < 0.2:  # warm-up walk
            hr, cadence, activity = self.rest_hr + (110 - self.rest_hr) * x / 0.2, 108 + 6 * x / 0.2, "WALKING"
        elif x < 0.7:  # the run
            ramp = min(1.0, (x - 0.2) / 0.1)
            hr = 110 + (self.max_hr - 110) * ramp
            cadence, activity = 114 + (self.run_cadence - 114) * ramp, "RUNNING"
        else:  # cool-down: walk, then rest
            y = min(1.0, (x - 0.7) / 0.3)
            hr = self.max_hr - (self.max_hr - self.rest_hr - 15) * y
            cadence, activity = (105.0, "WALKING") if y < 0.5 else (0.0, "RESTING")
        heart = round(hr + rng.gauss(0, 2))
        steps = round(cadence + rng.gauss(0, 1.5)) if cadence else None
        return heart, steps, activity


def cohort(n: int, run_id: str) -> list[Listener]:
    rng = random.Random(7)
    return [Listener(i + 1, rng.uniform(160, 178), rng.uniform(58, 72), rng.uniform(158, 172),
                     f"demo-{run_id}-{i + 1:02d}", rng.uniform(-4, 4)) for i in range(n)]


def phase(t: float, total: float) -> str:
    return "warm-up" if t < 0.2 * total else "run" if t < 0.7 * total else "cool-down"


# --- the run ---------------------------------------------------------------------------

def seed_consent(admin_key: str) -> int:
    snapshot = ConsentSnapshot.load()
    holders = sorted({h for w in load_catalog() for h in w.rights_holders})
    for holder in holders:
        call("PUT", f"{INGEST}/v1/rights-holders/{holder}/consent", admin_key, snapshot.consent_body(holder))
    return len(holders)


def mint_token(app_key: str, user_id: str, tier: str = "PREMIUM", territory: str = "DE") -> str:
    """What an app backend does for each signed-in user: exchange its app key for a listener token."""
    answer = call("POST", f"{INGEST}/v1/tokens", app_key, {"user_id": user_id, "subscription_tier": tier,
                                                           "territory": territory})
    return str(answer["token"])


def token_subject(token: str) -> str:
    """The listener id a token is for, verified with ingest's public keys as any verifier does."""
    keys = os.environ.get("ENTRAIN_TOKEN_PUBLIC_KEYS_FILE", str(STATE_DIR / "ingest" / "token-public.jwks"))
    return TokenVerifier.from_env({"ENTRAIN_TOKEN_PUBLIC_KEYS_FILE": keys}).verify(token, time.time()).listener_id


def drive(listeners: list[Listener], seconds: float, keys: dict[str, str]) -> dict[str, Any]:
    tokens = {lt.user_id: mint_token(keys["ENTRAIN_DEV_APP_KEY"], lt.user_id) for lt in listeners}
    started = time.time()
    plays_posted, withdrawn, last_report = 0, False, 0.0
    play_ids: set[str] = set()
    tempos: dict[str, float] = {}
    while (t := time.time() - started) < seconds:
        now_ms = int(time.time() * 1000)
        for listener in listeners:  # each device sends its own sample with its own token
            hr, cadence, activity = listener.body(t, seconds)
            listener.trace.append((t, hr, cadence, activity))
            call("POST", f"{INGEST}/v1/telemetry", tokens[listener.user_id], {"events": [{
                "event_id": str(uuid.uuid4()), "session_id": listener.session_id, "event_time": now_ms,
                "heart_rate_bpm": hr, "cadence_spm": cadence, "activity": activity}]})
        for listener in listeners:
            plays = []
            playlist = call("GET", f"{DELIVERY}/v1/playlist?session_id={listener.session_id}",
                            tokens[listener.user_id])
            if playlist["target_tempo_bpm"]:
                tempos[listener.user_id] = playlist["target_tempo_bpm"]
            for seg in playlist["segments"]:
                heard_by = seg["deadline"] + seg["duration_ms"] + 1000  # played after its deadline, then done
                if seg["segment_id"] not in listener.heard and heard_by <= now_ms:
                    listener.heard.add(seg["segment_id"])
                    plays.append({"play_id": str(uuid.uuid4()), "content_kind": "AI_SEGMENT",
                                  "segment_id": seg["segment_id"], "started_at": heard_by - seg["duration_ms"] - 1000,
                                  "ms_played": seg["duration_ms"], "completed": True})
            if plays:
                call("POST", f"{INGEST}/v1/plays", tokens[listener.user_id], {"plays": plays})
                plays_posted += len(plays)
                listener_id = token_subject(tokens[listener.user_id])
                play_ids.update(listener_play_id(listener_id, p["play_id"]) for p in plays)
        if not withdrawn and t >= seconds / 2:
            call("PUT", f"{INGEST}/v1/rights-holders/{WITHDRAWING_HOLDER}/consent",
                 keys["ENTRAIN_DEV_RIGHTS_HOLDER_KEY"], {"ai_training": True, "ai_generation": False,
                                                        "likeness": False})
            withdrawn = True
            print(f"  t={t:5.0f}s  {WITHDRAWING_HOLDER} withdraws AI-generation consent (its own API key)")
        if t - last_report >= 10:
            last_report = t
            hrs = [lt.trace[-1][1] or 0 for lt in listeners]
            mean_tempo = sum(tempos.values()) / len(tempos) if tempos else float("nan")
            print(f"  t={t:5.0f}s  {phase(t, seconds):9s}  heart rate {sum(hrs) / len(hrs):5.1f}  "
                  f"target tempo {mean_tempo:6.1f} BPM  segments heard {sum(len(lt.heard) for lt in listeners):4d}  "
                  f"plays {plays_posted:4d}", flush=True)
        time.sleep(max(0.0, 2.0 - (time.time() - started - t)))
    return {"plays_posted": plays_posted, "started": started, "play_ids": play_ids}


# --- artifacts -------------------------------------------------------------------------

def demo_segments(listeners: list[Listener]) -> list[dict[str, Any]]:
    """Every watermarked segment of this run's sessions, read from soundtrack.segments.v1."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    from kit.consumer import is_partition_eof
    from kit.serde import TopicSerde

    kafka = KafkaSettings.from_env()
    serde = TopicSerde.for_topic("soundtrack.segments.v1", kafka)
    sessions = {lt.session_id for lt in listeners}
    consumer = Consumer({**kafka.client_config(), "group.id": "demo-reader", "enable.auto.commit": False,
                         "enable.partition.eof": True})
    parts = consumer.list_topics(serde.topic, timeout=30).topics[serde.topic].partitions
    consumer.assign([TopicPartition(serde.topic, p, OFFSET_BEGINNING) for p in parts])
    out, done = [], set()
    while len(done) < len(parts):
        msg = consumer.poll(5)
        if msg is None:
            break
        if is_partition_eof(msg):
            done.add(msg.partition())
            continue
        if msg.error() is None:
            try:
                value = serde.decode_value(msg.value())
            except DecodeError:
                continue  # an earlier run's record in an old encoding: not this run's
            if value is not None and value["session_id"] in sessions:
                out.append(value)
    consumer.close()
    return out


def delivered(own: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What an HLS player of the session plays: the first version of each position, in order
    (``own``: the session's segments by position, versions in the order they were written)."""
    first: dict[int, dict[str, Any]] = {}
    for segment in own:
        first.setdefault(int(segment["sequence"]), segment)
    return [first[k] for k in sorted(first)]


def rendition_audio(store: Any, heard: list[dict[str, Any]], folder: Path) -> np.ndarray:
    """The session's AAC rendition as an HLS player downloads it, written to ``folder`` (the
    playlist delivery writes, with every segment and an end, and the objects it names: play it with
    ``ffplay folder/index.m3u8``), decoded in order by one decoder from its first sample."""
    from delivery.playlists import Entry, hls_media_playlist
    from kit import media

    with_rendition = [s for s in heard if s.get("rendition")]
    if not with_rendition:
        return np.zeros((1, 2), np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    init = store.get(with_rendition[0]["rendition"]["init_uri"])
    (folder / f"{with_rendition[0]['rendition']['init_sha256']}.mp4").write_bytes(init)
    fragments = []
    for segment in with_rendition:
        fragments.append(store.get(segment["rendition"]["uri"]))
        (folder / f"{segment['rendition']['sha256']}.m4s").write_bytes(fragments[-1])
    (folder / "index.m3u8").write_text(hls_media_playlist([Entry(s, 0) for s in with_rendition],
                                                          lambda sha, ext: f"{sha}.{ext}", ended=True,
                                                          window=len(with_rendition)))
    audio, _ = media.decode(init, fragments)
    return audio


def write_artifacts(listeners: list[Listener], segments: list[dict[str, Any]], out: Path, started: float) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kit.audio import decode_bytes, encode_wav, ffmpeg
    from kit.store import store_from_env
    from watermark.detector import report
    from watermark.keys import KeyRing
    from watermark.registry import RegistryIndex

    out.mkdir(parents=True, exist_ok=True)
    store, keys, registry = store_from_env(), KeyRing.from_env(), RegistryIndex(KafkaSettings.from_env()).start()
    registry.wait(60)
    first = listeners[0]
    own = sorted((s for s in segments if s["session_id"] == first.session_id), key=lambda s: s["sequence"])
    heard = delivered(own)
    hls = out / f"{first.user_id}-hls"
    audio = rendition_audio(store, heard, hls)
    wav = out / f"{first.user_id}.wav"
    wav.write_bytes(encode_wav(audio, 44_100, "PCM_16"))
    masters = [decode_bytes(store.get(s["audio"]["uri"]))[0] for s in heard]
    master = np.concatenate(masters) if masters else np.zeros((1, 2))
    (out / f"{first.user_id}-master.wav").write_bytes(encode_wav(master, 44_100, "PCM_16"))
    mp3 = out / f"{first.user_id}.mp3"
    mp3.write_bytes(ffmpeg(["-f", "wav", "-i", "pipe:0", "-c:a", "libmp3lame", "-b:a", "128k", "-f", "mp3",
                            "pipe:1"], wav.read_bytes()).stdout)
    received = sum(p.stat().st_size for p in hls.iterdir() if p.suffix in (".mp4", ".m4s"))
    print(f"  soundtrack of {first.user_id} as a player received it: {hls.relative_to(REPO_ROOT)}/index.m3u8 (AAC, "
          f"{8 * received / max(len(audio) / 44_100, 1e-9) / 1000:.0f} kbit/s), decoded to {wav.name} "
          f"({len(audio) / 44_100:.0f} s, {len(heard)} segments); the WAV masters joined: "
          f"{first.user_id}-master.wav; MP3 copy {mp3.name}")

    # Plot: the body against the music (segments drawn at their playback time, ~ their deadline).
    fig, (ax, cohort_ax) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    ts = [p[0] for p in first.trace]
    ax.plot(ts, [p[1] for p in first.trace], color="tab:red", label="heart rate (bpm)")
    ax.plot(ts, [p[2] or 0 for p in first.trace], color="tab:green", label="cadence (steps/min)")
    ax.step([s["deadline"] / 1000 - started for s in own], [s["params"]["tempo_bpm"] for s in own], where="post",
            color="tab:blue", linewidth=2, label="soundtrack tempo (BPM)")
    ax.set_ylabel(first.user_id)
    ax.legend(loc="upper right")
    ax.grid(alpha=0.3)
    by_session: dict[str, list[dict[str, Any]]] = {}
    for s in segments:
        by_session.setdefault(s["session_id"], []).append(s)
    for segs in by_session.values():
        segs.sort(key=lambda s: s["sequence"])
        cohort_ax.step([s["deadline"] / 1000 - started for s in segs], [s["params"]["tempo_bpm"] for s in segs],
                       where="post", alpha=0.45, linewidth=1)
    cohort_ax.set_ylabel(f"tempo, all {len(by_session)} listeners (BPM)")
    cohort_ax.set_xlabel("seconds since the cohort started")
    cohort_ax.grid(alpha=0.3)
    fig.suptitle("Entrain demo: the soundtrack follows the body (warm-up, run, cool-down)")
    fig.tight_layout()
    plot = out / "adaptation.png"
    fig.savefig(plot, dpi=110)
    print(f"  plot: {plot.relative_to(REPO_ROOT)}")

    # Watermark: every segment verified by the service; the detector on what a person would share.
    verified = sum(1 for s in segments if s["watermark"]["verification_score"] >= 1.0)
    checks: dict[str, Any] = {}
    if len(audio) >= 10 * 44_100:
        window = audio[len(audio) // 3: len(audio) // 3 + 10 * 44_100]
        checks["rendition_10s_window"] = report(encode_wav(window, 44_100), keys, registry)
        checks["rendition_whole_soundtrack"] = report(wav.read_bytes(), keys, registry)
        checks["mp3_128k_whole_soundtrack"] = report(mp3.read_bytes(), keys, registry)
    summary = {"segments": len(segments), "verified_by_service": verified,
               "min_verification_score": min((s["watermark"]["verification_score"] for s in segments), default=None),
               "keys": sorted({s["watermark"]["key_id"] for s in segments}), "detector_checks": checks}
    (out / "watermark-summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"  watermark: {verified}/{len(segments)} segments verified by the service "
          f"(min score {summary['min_verification_score']})")
    own_ids = {s["segment_id"] for s in heard}
    for name, check in checks.items():
        named = {h["segment_id"] for h in check["segments"]} & own_ids
        print(f"    detector on {name} ({check['duration_s']:.0f} s): detected={check['detected']}, "
              f"{len(named)} of its segments named with provenance, designed FP rate "
              f"{check['designed_false_positive_rate']:.0e}")


def statement(out: Path) -> None:
    period = time.strftime("%Y-%m", time.gmtime())
    result = subprocess.run([sys.executable, "-m", "royalty.statement", "--period", period, "--out",
                             str(out / "statements")], capture_output=True, text=True, cwd=REPO_ROOT)
    print("  royalty statement " + period + ":")
    for line in (result.stdout + result.stderr).strip().splitlines():
        print("    " + line)


def royalties(out: Path, play_ids: set[str], listeners: int) -> None:
    """What this run's plays paid, per listener-minute and to whom, next to the catalog rate."""
    kafka = KafkaSettings.from_env()
    ledger = [e for e in read_committed(kafka, "royalty.play-ledger.v1", skip_undecodable=True)
              if e["play_id"] in play_ids]
    lines = [x for x in read_committed(kafka, "royalty.events.v1", skip_undecodable=True) if x["play_id"] in play_ids]
    paid = [e for e in ledger if e["outcome"] == "PAID"]
    minutes = sum(e["paid_ms"] or 0 for e in paid) / 60_000
    total = sum(e["total_micros"] for e in paid)
    reasons: dict[str, int] = {}
    for e in ledger:
        if e["outcome"] != "PAID":
            reasons[e["reason"] or e["outcome"]] = reasons.get(e["reason"] or e["outcome"], 0) + 1
    payees: dict[str, int] = {}
    for x in lines:
        payees[x["rights_holder_id"]] = payees.get(x["rights_holder_id"], 0) + x["amount_micros"]
    rate = RateCard.load().price("DE", "PREMIUM", int(time.time() * 1000))
    catalog_play = sum(a for _, a in rate.amounts("CATALOG_WORK", 0, ""))
    summary = {"plays": len(play_ids), "ledgered": len(ledger), "paid": len(paid), "unpaid_by_reason": reasons,
               "paid_minutes": round(minutes, 3), "total_micros": total, "currency": rate.currency,
               "micros_per_listener_minute": round(total / minutes) if minutes else None,
               "catalog_track_micros": catalog_play, "catalog_micros_per_minute_of_3_5_min_track":
                   round(catalog_play / 3.5),
               "payees": dict(sorted(payees.items(), key=lambda kv: -kv[1]))}
    (out / "royalties.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"  royalties of this run: {len(paid)} of {len(play_ids)} plays paid ({len(ledger)} ledgered; "
          f"unpaid: {reasons or 'none'}), {minutes:.1f} listener-minutes of AI music heard by {listeners} listeners,")
    if play_ids and not ledger:
        print("    royalty ledgered none of them: see .state/royalty/service.log (it stops on a ledger it cannot "
              "read, e.g. one written before the schema registry: `make clean` starts afresh)")
    if minutes:
        print(f"    {decimal(total)} {rate.currency} = {total / minutes:,.0f} µ{rate.currency} per listener-minute "
              f"(a catalog play of a 3.5-minute track, {catalog_play:,} µ{rate.currency}: {catalog_play / 3.5:,.0f} "
              "per minute)")
    top = list(summary["payees"].items())[:5]
    print(f"    to {len(payees)} rights holders; the largest: "
          + ", ".join(f"{holder} {decimal(amount)}" for holder, amount in top))


def stack(command: str) -> None:
    subprocess.run([sys.executable, str(REPO_ROOT / "deploy/local/services.py"), command], check=command == "up",
                   cwd=REPO_ROOT)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listeners", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "artifacts" / "demo")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        print("== starting the services")
        stack("up")
        keys = dev_keys()
        print(f"== seeding consent for {seed_consent(keys['ENTRAIN_DEV_ADMIN_KEY'])} demo rights holders")
        run_id = time.strftime("%H%M%S")
        listeners = cohort(args.listeners, run_id)
        print(f"== {len(listeners)} listeners, {args.seconds:.0f} s: warm-up, run, cool-down")
        stats = drive(listeners, args.seconds, keys)
        print(f"== cohort done: {stats['plays_posted']} plays posted; letting royalty finish")
        time.sleep(8)
        segments = demo_segments(listeners)
        print(f"== artifacts in {args.out.relative_to(REPO_ROOT) if args.out.is_relative_to(REPO_ROOT) else args.out}")
        write_artifacts(listeners, segments, args.out, stats["started"])
        statement(args.out)
        royalties(args.out, stats["play_ids"], len(listeners))
        print("== try it yourself: open the listener page (the services keep running; `make down` stops them)")
        print("   (a listener token the demo minted as the app backend would; it expires in an hour)")
        print(f"   {DELIVERY}/#token={mint_token(keys['ENTRAIN_DEV_APP_KEY'], 'web-listener')}")
        return 0
    except KeyboardInterrupt:
        print("\n== interrupted: stopping the services and the local broker")
        stack("down")
        subprocess.run([sys.executable, str(REPO_ROOT / "deploy/local/kafka.py"), "down"], cwd=REPO_ROOT)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The delivered media path, on one listener's session of real segments, in one run.

  session   the music engine renders a session as the scheduler asks for it: a warm-up from 90 BPM,
            a run at up to 172 BPM and a cool-down to 80, each segment 1 bar up to 110 BPM and 2 bars
            above (soundtrack.schedule.bars_for), each continuing its predecessor; the masters are
            the stored PCM_16 WAVs, decoded as the watermark service decodes them
  encode    every segment's AAC-LC fragment (kit.media, chained to its predecessor) on one core:
            encode_x_realtime = seconds of audio per CPU second of the encode (process time)
  stream    the fragments, the init segment and the live playlist delivery writes for them
            (delivery.playlists.hls_media_playlist with signed URLs) written to a directory and
            decoded end to end by the ffmpeg CLI, as a player would, then compared with the
            masters joined (tests/gapless.py): max_join_gap_ms, join_error_ratio, and
            duration_error_ms_max (cumulative drift over the session; under one AAC frame, 23.2 ms,
            by construction: duration_error_frames_max < 1)
  bandwidth kbit_s_per_listener = the fragments + the init segment + one playlist reload per new
            segment (delivery's sliding window of signed URLs), per second of audio; the WAV
            masters (what was delivered before) are the baseline: wav_kbit_s
  stores    put and get latency of each segment's objects (the WAV master and the fragment, the
            sizes production writes) against the S3-compatible server (`make s3-up`, or the
            endpoint in AWS_ENDPOINT_URL) and against the filesystem store in a temporary
            directory (the baseline), the same objects in the same order
Last line: RESULT {json}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy" / "local"))

import s3 as local_s3
from tests.gapless import measure

from delivery.app import UrlSigner
from delivery.playlists import Entry, hls_media_playlist
from inference.engine import Context, Engine, Job, Params
from inference.wav import wav_bytes
from kit import media
from kit.audio import decode_bytes
from kit.store import FileStore, S3Store, SegmentStore
from soundtrack.schedule import bars_for


def tempo_at(i: int, n: int) -> float:
    """Warm-up, run, cool-down over n segments."""
    x = i / max(1, n - 1)
    if x < 0.2:
        return 90 + (172 - 90) * x / 0.2
    if x < 0.75:
        return 172 - 10 * np.sin(x * 20)
    return 172 - (172 - 80) * (x - 0.75) / 0.25


def session(n: int) -> list[bytes]:
    """n stored masters (WAV bytes) of one listener's session."""
    engine, out = Engine(), []
    context: Context | None = None
    for i in range(n):
        tempo = round(float(tempo_at(i, n)), 1)
        energy = min(1.0, max(0.1, (tempo - 60) / 120))
        job = Job(Params(tempo, energy, "MAJOR", 7, bars_for(tempo)), seed=i, context=context)
        (segment,) = engine.generate_batch([job])
        context = segment.context
        out.append(wav_bytes(segment.rendered.audio))
    return out


def encode(masters: list[np.ndarray]) -> tuple[list[bytes], list[media.Placement], float]:
    """The chained fragments, their placements, and the encode's CPU seconds."""
    fragments, placements, after, tail, cpu = [], [], None, None, 0.0
    for number, master in enumerate(masters, 1):
        placement = media.place(len(master), after)
        started = time.process_time()
        fragments.append(media.encode_fragment(master, placement, tail, number))
        cpu += time.process_time() - started
        placements.append(placement)
        after, tail = placement, master
    return fragments, placements, cpu


def listed(fragments: list[bytes], placements: list[media.Placement], init_sha: str) -> list[dict]:
    """The segments as delivery holds them (the fields its playlist reads)."""
    out = []
    for i, (fragment, placement) in enumerate(zip(fragments, placements, strict=True)):
        out.append({"segment_id": f"s{i}", "previous_segment_id": f"s{i - 1}" if i else None, "sequence": i,
                    "rendition": {"sha256": hashlib.sha256(fragment).hexdigest(), "init_sha256": init_sha,
                                  "frames": placement.frames, "sample_rate_hz": media.SAMPLE_RATE,
                                  "discontinuity": i == 0}})
    return out


def decode_with_ffmpeg(folder: Path, segments: list[dict], fragments: list[bytes], init: bytes) -> np.ndarray:
    """Write the session as delivery serves it (files named by hash) and let ffmpeg play the playlist."""
    init_sha = hashlib.sha256(init).hexdigest()
    (folder / f"{init_sha}.mp4").write_bytes(init)
    for segment, fragment in zip(segments, fragments, strict=True):
        (folder / f"{segment['rendition']['sha256']}.m4s").write_bytes(fragment)
    text = hls_media_playlist([Entry(s, 0) for s in segments], lambda sha, ext: f"{sha}.{ext}", ended=True,
                              window=len(segments))  # the whole session, as a player heard it
    (folder / "session.m3u8").write_text(text)
    done = subprocess.run(["ffmpeg", "-v", "error", "-i", str(folder / "session.m3u8"), "-f", "f32le", "-ac", "2",
                           "-ar", str(media.SAMPLE_RATE), "-"], capture_output=True, check=True, timeout=300)
    if done.stderr.strip():
        raise RuntimeError(f"ffmpeg reported errors decoding the playlist: {done.stderr.decode()[:500]}")
    return np.frombuffer(done.stdout, np.float32).reshape(-1, 2)


def playlist_bytes(segments: list[dict]) -> int:
    """What a player downloads in playlist reloads: one after each new segment, as delivery writes it."""
    signer, now, total = UrlSigner(b"b" * 32), time.time(), 0
    for i in range(len(segments)):
        window = [Entry(s, 0) for s in segments[:i + 1]]
        total += len(hls_media_playlist(window, lambda sha, ext: signer.sign(sha, "listener-0123456789ab", now, ext)))
    return total


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def store_latency(store: SegmentStore, objects: list[tuple[bytes, str]]) -> dict[str, float]:
    """Milliseconds per put and per get (SHA-256 checked) of each object, in order."""
    puts, gets = [], []
    for data, extension in objects:
        t = time.perf_counter()
        _, digest = store.put(data, extension)
        puts.append(1000 * (time.perf_counter() - t))
        t = time.perf_counter()
        if store.get_content(digest, extension) != data:
            raise RuntimeError("the store returned other bytes")
        gets.append(1000 * (time.perf_counter() - t))
    return {"put_p50_ms": round(statistics.median(puts), 2), "put_p99_ms": round(p(puts, 0.99), 2),
            "get_p50_ms": round(statistics.median(gets), 2), "get_p99_ms": round(p(gets, 0.99), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--segments", type=int, default=90, help="segments in the session (90: about 3 minutes)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    wavs = session(args.segments)
    masters = [decode_bytes(w)[0] for w in wavs]
    audio_s = sum(len(m) for m in masters) / media.SAMPLE_RATE
    lengths = [len(m) / media.SAMPLE_RATE for m in masters]
    print(f"session: {len(masters)} segments, {audio_s:.1f} s of audio, "
          f"segments {min(lengths):.2f}-{max(lengths):.2f} s")

    encode(masters[:3])  # warm-up
    fragments, placements, cpu = encode(masters)
    encode_x = audio_s / cpu
    print(f"encode: {encode_x:.1f}x real time on one core ({1000 * cpu / len(masters):.1f} ms per segment)")

    init = media.init_segment()
    segments = listed(fragments, placements, hashlib.sha256(init).hexdigest())
    with tempfile.TemporaryDirectory() as folder:
        decoded = decode_with_ffmpeg(Path(folder), segments, fragments, init)
    report = measure(decoded, media.PRIMING, masters, [pl.frames for pl in placements])
    print(f"stream decoded by ffmpeg: {len(decoded) / media.SAMPLE_RATE:.1f} s, {report}")

    media_bytes = sum(len(f) for f in fragments) + len(init)
    reloads = playlist_bytes(segments)
    kbit = 8 * (media_bytes + reloads) / audio_s / 1000
    wav_kbit = 8 * sum(len(w) for w in wavs) / audio_s / 1000
    print(f"bandwidth: {kbit:.1f} kbit/s per listener (media {8 * media_bytes / audio_s / 1000:.1f}, playlist "
          f"reloads {8 * reloads / audio_s / 1000:.1f}) vs WAV {wav_kbit:.0f} kbit/s")

    objects = [obj for w, f in zip(wavs, fragments, strict=True) for obj in ((w, "wav"), (f, "m4s"))]
    if not local_s3.ready():
        raise SystemExit("no S3 server on the local port: run `make s3-up` (make bench-media does)")
    env = local_s3.local_env(prefix=f"bench-media-{time.time_ns()}")
    s3 = store_latency(S3Store(env["ENTRAIN_SEGMENT_STORE"], env), objects)
    with tempfile.TemporaryDirectory() as folder:
        fs = store_latency(FileStore(Path(folder)), objects)
    print(f"S3 store (s3proxy on 127.0.0.1): {s3}")
    print(f"filesystem store: {fs}")

    frame_ms = 1000 * media.FRAME / media.SAMPLE_RATE
    print("RESULT " + json.dumps({
        "segments": len(masters), "audio_s": round(audio_s, 1),
        "kbit_s_per_listener": round(kbit, 1), "wav_kbit_s": round(wav_kbit, 1),
        "bandwidth_vs_wav": round(kbit / wav_kbit, 3),
        "encode_x_realtime": round(encode_x, 1), "encode_ms_per_segment": round(1000 * cpu / len(masters), 1),
        "max_join_gap_ms": report["max_join_gap_ms"], "join_error_ratio": report["join_error_ratio"],
        "duration_error_ms_max": report["duration_error_ms_max"],
        "duration_error_frames_max": round(report["duration_error_ms_max"] / frame_ms, 3),
        "s3_put_p99_ms": s3["put_p99_ms"], "s3_get_p99_ms": s3["get_p99_ms"],
        "s3_put_p50_ms": s3["put_p50_ms"], "s3_get_p50_ms": s3["get_p50_ms"],
        "fs_put_p99_ms": fs["put_p99_ms"], "fs_get_p99_ms": fs["get_p99_ms"],
        "fs_put_p50_ms": fs["put_p50_ms"], "fs_get_p50_ms": fs["get_p50_ms"],
        "s3_vs_fs_get_p99": round(s3["get_p99_ms"] / max(fs["get_p99_ms"], 1e-3), 1)}))


if __name__ == "__main__":
    main()

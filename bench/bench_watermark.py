"""Watermark quality and speed on generated music, in one run.

  clips        N clips of 10 s rendered by the inference engine (varied tempo, energy, mode,
               key), each marked with its own random 32-bit payload under one key
  snr_db       mean SNR of the embedding over the clips (min also printed)
  per attack   bit accuracy of the decoded 48-bit word (payload + CRC) against the embedded
               one, and detect rate (presence test passed, CRC ok and payload correct)
  false pos.   detection on 10 s windows of unmarked audio: the clean clips at many offsets,
               white and pink noise, and unmarked music x10 with clipping (which the detector
               also reads in the clip domain), with every window counted
  stream       excerpts of 5-30 s cut anywhere from multi-segment sessions (bench/watermark_streams.py),
               from the marked masters (stream_excerpt) and from the delivered AAC rendition
               decoded as a player does (delivered_rendition): detected and named, per length
               and tempo band
  speed        embed, detect and verify (the service's check of a segment it marked, at the
               known alignment) as x real time on one core (single-threaded numpy/BLAS),
               against a baseline in the same run: one STFT+ISTFT round trip of the same
               audio, the floor any STFT-domain scheme pays; detection of hard-clipped audio
               (both paths) is timed on the gain x10 attack
Attacks use ffmpeg (libmp3lame, aac, libopus, aresample, lowpass/highpass filters).
Last line: RESULT {json}.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import json
import time
from typing import Any

import numpy as np
import watermark_streams
from tests.watermark_clips import music_clips

from watermark.attacks import ATTACKS
from watermark.keys import KeyRing
from watermark.scheme import SAMPLE_RATE, _istft, _stft, detect, embed, verify, word_bits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=50)
    parser.add_argument("--fp-windows", type=int, default=10_000)
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--excerpts", type=int, default=1000, help="stream excerpts of the masters (0: none)")
    parser.add_argument("--rendition-excerpts", type=int, default=250, help="... of the delivered rendition")
    parser.add_argument("--session-s", type=float, default=60.0, help="length of each session excerpts come from")
    args = parser.parse_args()
    ring = KeyRing.from_mapping({"wk-bench": "5a" * 32}, "wk-bench")
    key = ring.active
    rng = np.random.default_rng(2026)
    clips = music_clips(args.clips, 10.0, seed=42)
    seconds = 10.0 * len(clips)

    started = time.process_time()
    for clip in clips:
        mono = clip.mean(axis=1)
        _istft(_stft(mono), len(mono))
    baseline_s = time.process_time() - started

    payloads = [int(rng.integers(0, 1 << 32)) for _ in clips]
    started = time.process_time()
    marked = [embed(c, key, p) for c, p in zip(clips, payloads, strict=True)]
    embed_s = time.process_time() - started
    snrs = [10 * np.log10(np.sum(c.astype(np.float64) ** 2) / np.sum((m - c.astype(np.float64)) ** 2))
            for c, m in zip(clips, marked, strict=True)]
    print(f"clips {len(clips)} x 10 s; SNR mean {np.mean(snrs):.1f} dB, min {np.min(snrs):.1f} dB")

    started = time.process_time()
    clean_results = [detect(m, SAMPLE_RATE, [key]) for m in marked]
    detect_s = time.process_time() - started
    started = time.process_time()
    verified = [verify(m, SAMPLE_RATE, key) for m in marked]  # the service's check, at the known alignment
    verify_s = time.process_time() - started
    assert all(v.detected == d.detected and v.payload == d.payload
               for v, d in zip(verified, clean_results, strict=True))

    bit_acc: dict[str, float] = {}
    detect_rate: dict[str, float] = {}
    clipped_s = 0.0
    for name in args.attacks.split(","):
        accs, hits = [], []
        for i, (m, p) in enumerate(zip(marked, payloads, strict=True)):
            if name == "none":
                found = clean_results[i]
            else:
                audio, rate = ATTACKS[name](m, SAMPLE_RATE, rng)
                started = time.process_time()
                found = detect(audio, rate, [key])
                if name == "gain_10_clip":
                    clipped_s += time.process_time() - started
            accs.append(float(np.mean(found.bits == word_bits(key, p))) if found.bits is not None else 0.5)
            hits.append(found.detected and found.payload == p)
        bit_acc[name], detect_rate[name] = round(float(np.mean(accs)), 4), round(float(np.mean(hits)), 4)
        print(f"  {name:20s} bit_acc {bit_acc[name]:.3f}  detect_rate {detect_rate[name]:.2f}")

    windows = false_positives = 0
    sources = [c.mean(axis=1) for c in clips]
    sources.append(np.concatenate(sources))
    noise_len = 10 * SAMPLE_RATE
    fp_scores = []
    while windows < args.fp_windows:
        kind = windows % 5
        if kind in (0, 1, 4):  # unmarked music: random 10 s windows across clip boundaries, random gain
            long = sources[-1]
            start = int(rng.integers(0, len(long) - noise_len))
            window = long[start:start + noise_len] * float(rng.uniform(0.1, 2.0))
            if kind == 4:  # ... or x10 with clipping: the detector reads it in both domains
                window = np.clip(window * 10.0, -1.0, 1.0)
        elif kind == 2:
            window = rng.standard_normal(noise_len) * 0.1
        else:
            white = np.fft.rfft(rng.standard_normal(noise_len))
            window = np.fft.irfft(white / np.sqrt(np.maximum(np.fft.rfftfreq(noise_len, 1 / SAMPLE_RATE), 20)),
                                  n=noise_len)
        found = detect(window, SAMPLE_RATE, [key])
        fp_scores.append(found.score)
        false_positives += int(found.detected)
        windows += 1
        if windows % 1000 == 0:
            print(f"  false-positive windows {windows}: {false_positives} detected, max score {max(fp_scores):.2f}")

    streams: dict[str, Any] = {}
    if args.excerpts or args.rendition_excerpts:
        masters = watermark_streams.sessions(ring, args.session_s)
        for name, count, source in (("stream_excerpt", args.excerpts, masters),
                                    ("delivered_rendition", args.rendition_excerpts,
                                     [watermark_streams.delivered(s) for s in masters] if args.rendition_excerpts
                                     else [])):
            if count:
                streams[name] = watermark_streams.excerpts(source, ring, count)
                print(f"  {name}: {json.dumps(streams[name])}")

    result = {
        **{f"{name}_detected": figures["all"]["detected"] for name, figures in streams.items()},
        **{f"{name}_named": figures["all"]["named"] for name, figures in streams.items()},
        "streams": streams,
        "clips": len(clips), "snr_db": round(float(np.mean(snrs)), 2), "snr_db_min": round(float(np.min(snrs)), 2),
        "bit_acc": bit_acc, "detect_rate": detect_rate,
        "false_positives": false_positives, "windows_checked": windows,
        "max_unmarked_score": round(max(fp_scores), 3),
        "embed_x_realtime": round(seconds / embed_s, 1), "detect_x_realtime": round(seconds / detect_s, 1),
        "verify_x_realtime": round(seconds / verify_s, 1), "verify_vs_detect": round(detect_s / verify_s, 2),
        "detect_clipped_x_realtime": round(seconds / clipped_s, 1) if clipped_s else None,
        "stft_roundtrip_x_realtime": round(seconds / baseline_s, 1),
        "embed_vs_stft_roundtrip": round(baseline_s / embed_s, 3),
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()

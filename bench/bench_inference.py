"""Music engine speed on one core (torch and the renderer single-threaded), in one run.

  single   segments at 120 BPM of the length the scheduler asks for (2 bars; 1 bar up to 110 BPM),
           one request at a time: latency p50/p99, real-time factor (seconds of audio per second
           of compute); once with the renderer's cached synthesizer and once with a fresh one per
           segment (the SoundFont parsed every time, as before the cache): the baseline
  batch    the same requests in micro-batches of 8 (what the service does with a poll)
  listeners_per_core = the batch real-time factor: a listener consumes one second of
           audio per second, so one core keeps that many listeners supplied (before Kafka,
           storage and watermarking, which other processes do)
Batched requests vary tempo (60-200 BPM, each at its scheduled length), energy and mode and
continue their previous segment.
Last line: RESULT {json}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import inference.render as render
from inference.engine import Context, Engine, Job, Params
from soundtrack.schedule import bars_for


def params_of(i: int) -> Params:
    tempo = 60 + (i * 37) % 141
    return Params(tempo, (i % 10) / 10, "MAJOR" if i % 3 else "MINOR", i % 12, bars_for(tempo))


def run_single(engine: Engine, n: int, fresh_synth: bool) -> tuple[float, list[float]]:
    """Real-time factor and sorted latencies of n one-at-a-time requests at 120 BPM."""
    latencies, audio_s = [], 0.0
    started = time.perf_counter()
    for i in range(n):
        if fresh_synth:
            render.reset_synthesizer()  # the next segment loads the SoundFont again
        t = time.perf_counter()
        segment = engine.generate(Params(120, (i % 10) / 10, "MAJOR", i % 12, bars_for(120)), seed=i)
        latencies.append(time.perf_counter() - t)
        audio_s += segment.duration_ms / 1000
    return audio_s / (time.perf_counter() - started), sorted(latencies)


def run_batches(engine: Engine, n: int, batch: int, offset: int) -> float:
    """``batch`` listeners, each batch one segment of each, continuing its own previous segment
    (the context travels with the job, as the service passes it); returns seconds of audio."""
    contexts: dict[int, Context] = {}
    audio = 0.0
    for start in range(0, n, batch):
        work = [Job(params_of(i), seed=offset + i, context=contexts.get(i % batch))
                for i in range(start, min(n, start + batch))]
        for i, segment in zip(range(start, start + len(work)), engine.generate_batch(work), strict=True):
            contexts[i % batch] = segment.context
            audio += segment.duration_ms / 1000
    return audio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=120)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    engine = Engine()
    run_batches(engine, 4, 4, 10_000)  # warm-up

    rtf_fresh, _ = run_single(engine, args.requests, fresh_synth=True)
    rtf_single, latencies = run_single(engine, args.requests, fresh_synth=False)

    started = time.perf_counter()
    audio_b = run_batches(engine, args.requests, args.batch, 0)
    rtf_batch = audio_b / (time.perf_counter() - started)

    p50 = statistics.median(latencies) * 1000
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1000
    print(f"single: {rtf_single:.0f}x real time, {bars_for(120)} bars at 120 BPM p50 {p50:.0f} ms, p99 {p99:.0f} ms; "
          f"with a fresh synthesizer per segment {rtf_fresh:.0f}x ({rtf_single / rtf_fresh:.2f}x faster cached)")
    print(f"batch of {args.batch}: {rtf_batch:.0f}x real time ({rtf_batch / rtf_single:.2f}x the single rate)")
    print("RESULT " + json.dumps({"rtf_single": round(rtf_single, 1), "rtf_batch": round(rtf_batch, 1),
                                  "rtf_single_fresh_synth": round(rtf_fresh, 1),
                                  "cached_vs_fresh_synth": round(rtf_single / rtf_fresh, 2),
                                  "bars_at_120": bars_for(120),
                                  "batch_vs_single": round(rtf_batch / rtf_single, 2), "p50_ms": round(p50, 1),
                                  "p99_ms": round(p99, 1), "listeners_per_core": int(rtf_batch),
                                  "requests": args.requests, "batch": args.batch}))


if __name__ == "__main__":
    main()

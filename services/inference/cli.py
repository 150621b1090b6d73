"""Generate a segment (or a continuous run of segments) to a WAV file.

    python -m inference.cli --bpm 128 --energy 0.7 --mode major --key 7 --bars 8 --seed 1 -o out.wav
    python -m inference.cli --bpm 170 --segments 4 -o run.wav     # 4 continuing segments, joined
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from inference.engine import Engine, Params
from inference.render import SAMPLE_RATE, loudness
from inference.wav import write_wav

KEYS = ["C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"]


def key_number(text: str) -> int:
    if text.isdigit() and 0 <= int(text) <= 11:
        return int(text)
    if text in KEYS:
        return KEYS.index(text)
    raise argparse.ArgumentTypeError(f"key must be 0-11 or one of {' '.join(KEYS)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bpm", type=float, default=120.0)
    parser.add_argument("--energy", type=float, default=0.5)
    parser.add_argument("--mode", choices=["major", "minor"], default="major")
    parser.add_argument("--key", type=key_number, default=0, help="tonic: 0-11 or a name like G or Eb")
    parser.add_argument("--bars", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--segments", type=int, default=1, help="continuing segments to generate and join")
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        params = Params(args.bpm, args.energy, args.mode.upper(), args.key, args.bars)
    except ValueError as exc:
        parser.error(str(exc))
    engine = Engine()
    started = time.perf_counter()
    parts, context, influences = [], None, []
    for n in range(args.segments):
        segment = engine.generate(params, args.seed + n, context)
        parts.append(segment.rendered.audio)
        influences.append(segment.influences)
        context = segment.context
    audio = np.concatenate(parts)
    elapsed = time.perf_counter() - started
    write_wav(args.output, audio)
    seconds = len(audio) / SAMPLE_RATE
    print(json.dumps({"output": str(args.output), "seconds": round(seconds, 3), "bpm": args.bpm,
                      "key": KEYS[args.key], "mode": params.mode, "energy": args.energy,
                      "loudness_lufs": round(loudness(audio), 2),
                      "peak_dbfs": round(float(20 * np.log10(np.max(np.abs(audio)))), 2),
                      "x_realtime": round(seconds / elapsed, 1), "model": f"{engine.model_id} {engine.model_version}",
                      "influences": influences[0]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

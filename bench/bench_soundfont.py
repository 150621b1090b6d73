"""Which General MIDI SoundFont renders the soundtrack: cost and spectrum of each, on one session.

Every SoundFont renders the same session as `make bench-music` (warm-up, run, cool-down; production
segment lengths; the same melodies, chords and drums: only the samples differ), one thread, against
TimGM6mb (the fallback, shipped in pretty-midi) in the same run:

  render_x_realtime   seconds of audio per CPU second rendering the session (goal >= 60, bench-music's)
  load_s              loading the SoundFont into TinySoundFont (once per rendering thread)
  samples             how many recorded samples it holds (sf2 ``shdr``), and sample_seconds: how much
                      recording they add up to (sf2 only: an sf3's are Ogg-compressed) — a short
                      loop repeated is what makes a cheap font sound synthetic
  rolloff_99_hz       the frequency below which 99 % of the session's energy lies (Welch spectrum)
  above_5khz_db       the energy above 5 kHz relative to the whole (brightness, air; dB)
  flatness_db         mean spectral flatness of 93 ms frames (dB: nearer 0 is noisier, lower more tonal)
  energy_spearman_*   bench-music's check that the arrangement follows energy, in this font: energy's
                      rank correlation with onsets a second and with spectral centroid (goal >= 0.9)

Fonts that are not installed (the Debian packages fluid-soundfont-gm, fluidr3mono-gm-soundfont; the
project's install step adds them) are reported as missing. Last line: RESULT {json}.
"""

from __future__ import annotations

import json
import os
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_music import energy_correlation, plan, render_session
from scipy.signal import stft, welch

from inference import render
from inference.engine import Engine
from inference.render import SAMPLE_RATE

FONTS = {
    "TimGM6mb": render.fallback_soundfont(),
    "FluidR3_GM": "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "FluidR3Mono_GM": "/usr/share/sounds/sf3/FluidR3Mono_GM.sf3",
}


def sample_headers(path: str) -> list[tuple[int, int, int]]:
    """Every sample's (start, end, rate) from the SoundFont's ``shdr`` chunk (46-byte records)."""
    data = Path(path).read_bytes()
    at = 12  # RIFF, size, "sfbk"; then chunks: the sub-chunks of LIST "pdta" hold "shdr"
    while at < len(data):
        kind, size = data[at:at + 4], struct.unpack_from("<I", data, at + 4)[0]
        if kind == b"LIST" and data[at + 8:at + 12] == b"pdta":
            at += 12
            continue
        if kind == b"shdr":
            return [struct.unpack_from("<IIxxxxxxxxI", data, at + 8 + k + 20)
                    for k in range(0, size - 46, 46)]  # the last record only marks the end
        at += 8 + size + size % 2  # chunks are word-aligned in sf2; sf3 writers may skip the pad byte
        if size % 2 and not data[at:at + 4].isalpha():
            at -= 1
    raise ValueError(f"{path}: no sample headers")


def spectrum(audio: np.ndarray) -> dict[str, float]:
    mono = audio.mean(axis=1)
    freqs, power = welch(mono, SAMPLE_RATE, nperseg=8192)
    cumulative = np.cumsum(power) / power.sum()
    _, _, frames = stft(mono, SAMPLE_RATE, nperseg=4096)
    magnitude = np.abs(frames) ** 2 + 1e-20
    loud = magnitude.sum(axis=0) > 1e-6 * magnitude.sum(axis=0).max()  # frames with sound
    flatness = np.exp(np.log(magnitude[:, loud]).mean(axis=0)) / magnitude[:, loud].mean(axis=0)
    return {"rolloff_99_hz": round(float(freqs[np.searchsorted(cumulative, 0.99)])),
            "above_5khz_db": round(float(10 * np.log10(power[freqs >= 5000].sum() / power.sum())), 1),
            "flatness_db": round(float(10 * np.log10(flatness.mean())), 1)}


def measure(engine: Engine, path: str) -> dict[str, Any]:
    os.environ["ENTRAIN_SOUNDFONT"] = path
    render.soundfont_path.cache_clear()
    render.reset_synthesizer()
    started = time.perf_counter()
    render._synth()
    load = time.perf_counter() - started
    headers = sample_headers(path)
    params = plan()
    audio, _, cpu = render_session(engine, params)
    joined = np.concatenate(audio)
    seconds = len(joined) / SAMPLE_RATE
    ordering = energy_correlation(engine)
    return {"energy_spearman_onsets": round(ordering["onsets"], 3),
            "energy_spearman_centroid": round(ordering["centroid"], 3),
            "render_x_realtime": round(seconds / cpu, 1), "load_s": round(load, 2),
            "size_mb": round(Path(path).stat().st_size / 1e6, 1),
            "samples": len(headers), "sample_seconds": None if path.endswith(".sf3") else round(
                sum((end - start) / rate for start, end, rate in headers if rate), 1), **spectrum(joined)}


def main() -> None:
    import torch

    torch.set_num_threads(1)
    engine = Engine()
    result: dict[str, Any] = {}
    for name, path in FONTS.items():
        if not Path(path).is_file():
            result[name] = "missing"
            print(f"{name}: not installed ({path})")
            continue
        result[name] = measure(engine, path)
        print(f"{name}: {result[name]}", flush=True)
    base = result["TimGM6mb"]["render_x_realtime"]
    for figures in result.values():
        if isinstance(figures, dict):
            figures["render_ratio_vs_timgm6mb"] = round(figures["render_x_realtime"] / base, 3)
            figures["goal_render_met"] = figures["render_x_realtime"] >= 60
    os.environ.pop("ENTRAIN_SOUNDFONT")
    render.soundfont_path.cache_clear()
    result["default"] = Path(render.soundfont_path()).stem
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()

"""Generated music clips for watermark tests and the benchmark (rendered by the inference engine)."""

from __future__ import annotations

import math

import numpy as np

from inference.engine import Engine, Params
from inference.render import SAMPLE_RATE


def music_clips(count: int, seconds: float = 10.0, seed: int = 7) -> list[np.ndarray]:
    """``count`` stereo clips of exactly ``seconds``, varied in tempo, energy, mode and key."""
    engine, rng, clips = Engine(), np.random.default_rng(seed), []
    for i in range(count):
        bpm = float(rng.uniform(62, 190))
        bars = math.ceil(seconds * bpm / 240) + 1
        params = Params(bpm, float(rng.uniform(0, 1)), "MAJOR" if i % 2 else "MINOR", int(rng.integers(12)), bars)
        audio = engine.generate(params, seed=seed * 1000 + i).rendered.audio
        clips.append(audio[:int(seconds * SAMPLE_RATE)])
    return clips

"""Writing rendered segments as 16-bit WAV (encoding lives in kit.audio)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from inference.render import SAMPLE_RATE
from kit.audio import encode_wav


def wav_bytes(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    return encode_wav(audio, sample_rate, "PCM_16")


def write_wav(path: Path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(wav_bytes(audio, sample_rate))

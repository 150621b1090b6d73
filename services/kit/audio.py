"""Audio files in and out, for every service: soundfile for WAV/FLAC/OGG, ffmpeg for everything
else (MP3, AAC, Opus...)."""

from __future__ import annotations

import io
import shutil
import subprocess

import numpy as np
import soundfile

MAX_DECODE_SECONDS = 600


class AudioError(ValueError):
    """The audio cannot be read, written or analysed (not audio, too short, silent...)."""


def encode_wav(audio: np.ndarray, sample_rate: int, subtype: str = "FLOAT") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, np.asarray(audio, dtype=np.float32), sample_rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def decode_bytes(data: bytes) -> tuple[np.ndarray, int]:
    """Decode any audio file to float (samples, channels) and its sample rate; AudioError if not audio."""
    if not data:
        raise AudioError("empty file")
    try:
        audio, sr = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError):
        audio, sr = _ffmpeg_decode(data)
    if len(audio) == 0:
        raise AudioError("file holds no audio samples")
    if len(audio) > MAX_DECODE_SECONDS * sr:
        raise AudioError(f"audio longer than {MAX_DECODE_SECONDS} s; cut it first")
    return audio, int(sr)


def ffmpeg(args: list[str], data: bytes, timeout_s: float = 120) -> subprocess.CompletedProcess[bytes]:
    """Run ffmpeg with a fixed argument list (no shell), ``data`` on stdin."""
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise AudioError("ffmpeg (needed for MP3/AAC/Opus) is not installed: make venv installs it")
    return subprocess.run([exe, "-hide_banner", "-loglevel", "error", *args],  # noqa: S603 (fixed argv, no shell)
                          input=data, capture_output=True, timeout=timeout_s)


def _ffmpeg_decode(data: bytes) -> tuple[np.ndarray, int]:
    proc = ffmpeg(["-i", "pipe:0", "-t", str(MAX_DECODE_SECONDS + 1), "-c:a", "pcm_f32le", "-f", "wav", "pipe:1"], data)
    if proc.returncode != 0 or not proc.stdout:
        reason = proc.stderr.decode(errors="replace").strip().splitlines()
        raise AudioError(f"not a decodable audio file ({reason[-1] if reason else 'ffmpeg failed'})")
    audio, sr = soundfile.read(io.BytesIO(proc.stdout), dtype="float32", always_2d=True)
    return audio, int(sr)

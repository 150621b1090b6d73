"""Audio files in and out: soundfile for WAV/FLAC/OGG, ffmpeg for everything else (MP3, AAC, Opus...)."""

from __future__ import annotations

import io
import shutil
import subprocess

import numpy as np
import soundfile

from watermark.scheme import AudioError

MAX_DECODE_SECONDS = 600


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


def _ffmpeg_decode(data: bytes) -> tuple[np.ndarray, int]:
    if shutil.which("ffmpeg") is None:
        raise AudioError("not WAV/FLAC/OGG, and ffmpeg (needed for MP3/AAC/Opus) is not installed")
    proc = subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-i", "pipe:0", "-t", str(MAX_DECODE_SECONDS + 1),
         "-c:a", "pcm_f32le", "-f", "wav", "pipe:1"],
        input=data, capture_output=True, timeout=120)
    if proc.returncode != 0 or not proc.stdout:
        reason = proc.stderr.decode(errors="replace").strip().splitlines()
        raise AudioError(f"not a decodable audio file ({reason[-1] if reason else 'ffmpeg failed'})")
    audio, sr = soundfile.read(io.BytesIO(proc.stdout), dtype="float32", always_2d=True)
    return audio, int(sr)

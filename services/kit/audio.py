"""Audio files in and out, for every service: soundfile for WAV/FLAC/OGG, ffmpeg for everything
else (MP3, AAC, Opus...)."""

from __future__ import annotations

import io
import shutil
import subprocess

import numpy as np
import soundfile

MAX_DECODE_SECONDS = 600
MAX_CHANNELS = 8
MAX_SAMPLE_RATE = 192_000


class AudioError(ValueError):
    """The audio cannot be read, written or analysed (not audio, too short, silent...)."""


def encode_wav(audio: np.ndarray, sample_rate: int, subtype: str = "FLOAT") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, np.asarray(audio, dtype=np.float32), sample_rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def decode_bytes(data: bytes) -> tuple[np.ndarray, int]:
    """Decode any audio file to float (samples, channels) and its sample rate; AudioError if not audio.

    The decoded size is bounded before anything is allocated: a small file that declares hours
    of audio (FLAC or OGG of silence compress to almost nothing), too many channels or an absurd
    sample rate is refused from its header; what ffmpeg decodes is capped in duration and bytes."""
    if not data:
        raise AudioError("empty file")
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as header:
            _check_shape(header.frames, header.channels, header.samplerate)
            audio, sr = header.read(dtype="float32", always_2d=True), header.samplerate
    except (soundfile.LibsndfileError, RuntimeError, TypeError):
        audio, sr = _ffmpeg_decode(data)
    if len(audio) == 0:
        raise AudioError("file holds no audio samples")
    if len(audio) > MAX_DECODE_SECONDS * sr:
        raise AudioError(f"audio longer than {MAX_DECODE_SECONDS} s; cut it first")
    return audio, int(sr)


def _check_shape(frames: int, channels: int, sample_rate: int) -> None:
    if not 0 < channels <= MAX_CHANNELS:
        raise AudioError(f"{channels} channels; at most {MAX_CHANNELS}")
    if not 0 < sample_rate <= MAX_SAMPLE_RATE:
        raise AudioError(f"sample rate {sample_rate} Hz; at most {MAX_SAMPLE_RATE}")
    if frames > MAX_DECODE_SECONDS * sample_rate:
        raise AudioError(f"audio longer than {MAX_DECODE_SECONDS} s ({frames / sample_rate:.0f} s declared); "
                         "cut it first")


def ffmpeg(args: list[str], data: bytes, timeout_s: float = 120) -> subprocess.CompletedProcess[bytes]:
    """Run ffmpeg with a fixed argument list (no shell), ``data`` on stdin."""
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise AudioError("ffmpeg (needed for MP3/AAC/Opus) is not installed: make venv installs it")
    return subprocess.run([exe, "-hide_banner", "-loglevel", "error", *args],  # noqa: S603 (fixed argv, no shell)
                          input=data, capture_output=True, timeout=timeout_s)


def _ffmpeg_decode(data: bytes) -> tuple[np.ndarray, int]:
    # Stereo at most, and no more bytes than MAX_DECODE_SECONDS of it at 48 kHz (plus a header).
    cap = (MAX_DECODE_SECONDS + 1) * 48_000 * 2 * 4 + 4096
    proc = ffmpeg(["-i", "pipe:0", "-t", str(MAX_DECODE_SECONDS + 1), "-ac", "2", "-c:a", "pcm_f32le",
                   "-fs", str(cap), "-f", "wav", "pipe:1"], data)
    if proc.returncode != 0 or not proc.stdout:
        reason = proc.stderr.decode(errors="replace").strip().splitlines()
        raise AudioError(f"not a decodable audio file ({reason[-1] if reason else 'ffmpeg failed'})")
    audio, sr = soundfile.read(io.BytesIO(proc.stdout), dtype="float32", always_2d=True)
    return audio, int(sr)

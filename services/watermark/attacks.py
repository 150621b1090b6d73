"""Attacks on watermarked audio: real codecs and filters through ffmpeg, noise and edits in numpy.

Used by ``make bench-watermark`` and the tests. Every attack takes float audio at
``SAMPLE_RATE`` (mono or stereo) and returns (audio, sample_rate).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable

import numpy as np

from kit.audio import decode_bytes, encode_wav, ffmpeg

Attack = Callable[[np.ndarray, int, np.random.Generator], tuple[np.ndarray, int]]


def ffmpeg_available() -> bool:
    return shutil.which("ffmpeg") is not None


def _ffmpeg(audio: np.ndarray, sr: int, args: list[str], fmt: str) -> tuple[np.ndarray, int]:
    """Encode with ffmpeg (``args`` choose codec or filter, ``fmt`` the container), decode back."""
    proc = ffmpeg(["-f", "wav", "-i", "pipe:0", *args, "-f", fmt, "pipe:1"], encode_wav(audio, sr))
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg {' '.join(args)} failed: {proc.stderr.decode(errors='replace')}")
    return decode_bytes(proc.stdout)


def codec(codec_args: list[str], fmt: str) -> Attack:
    return lambda a, sr, rng: _ffmpeg(a, sr, codec_args, fmt)


def ffilter(expr: str) -> Attack:
    return lambda a, sr, rng: _ffmpeg(a, sr, ["-af", expr, "-c:a", "pcm_f32le"], "wav")


def _noise(a: np.ndarray, snr_db: float, noise: np.ndarray) -> np.ndarray:
    p_signal = np.mean(a.astype(np.float64) ** 2)
    noise = noise * np.sqrt(p_signal / np.mean(noise ** 2) / 10 ** (snr_db / 10))
    return np.asarray(a + noise)


def white_noise(snr_db: float) -> Attack:
    return lambda a, sr, rng: (_noise(a, snr_db, rng.standard_normal(a.shape)), sr)


def pink_noise(snr_db: float) -> Attack:
    def attack(a: np.ndarray, sr: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        white = rng.standard_normal(a.shape)
        spectrum = np.fft.rfft(white, axis=0)
        f = np.maximum(np.fft.rfftfreq(len(a), 1 / sr), 20.0)
        shape = 1 / np.sqrt(f)
        pink = np.fft.irfft(spectrum * (shape if a.ndim == 1 else shape[:, None]), n=len(a), axis=0)
        return _noise(a, snr_db, pink), sr
    return attack


def gain(factor: float) -> Attack:
    return lambda a, sr, rng: (np.clip(a * factor, -1.0, 1.0), sr)


def then(first: Attack, second: Attack) -> Attack:
    """Two attacks in a row."""
    def attack(a: np.ndarray, sr: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        audio, rate = first(a, sr, rng)
        return second(audio, rate, rng)
    return attack


def echo(delay_s: float, level: float) -> Attack:
    def attack(a: np.ndarray, sr: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        out = a.astype(np.float64).copy()
        lag = int(delay_s * sr)
        out[lag:] += level * a[:-lag]
        return out, sr
    return attack


def crop(seconds: float) -> Attack:
    def attack(a: np.ndarray, sr: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        n = int(seconds * sr)
        start = int(rng.integers(0, len(a) - n + 1))
        return a[start:start + n], sr
    return attack


def speed(factor: float) -> Attack:
    """Play faster or slower, pitch included (like a tape or a resampling player)."""
    return ffilter(f"asetrate={int(44100 * factor)},aresample=44100")


ATTACKS: dict[str, Attack] = {
    "none": lambda a, sr, rng: (a, sr),
    "mp3_128": codec(["-c:a", "libmp3lame", "-b:a", "128k"], "mp3"),
    "mp3_64": codec(["-c:a", "libmp3lame", "-b:a", "64k"], "mp3"),
    "mp3_32": codec(["-c:a", "libmp3lame", "-b:a", "32k"], "mp3"),
    "aac_64": codec(["-c:a", "aac", "-b:a", "64k"], "adts"),
    "opus_24": codec(["-c:a", "libopus", "-b:a", "24k"], "ogg"),
    "resample_32k": ffilter("aresample=32000,aresample=44100"),
    "white_noise_20db": white_noise(20.0),
    "pink_noise_20db": pink_noise(20.0),
    "lowpass_5k": ffilter("lowpass=f=5000"),
    "highpass_500": ffilter("highpass=f=500"),
    "highpass_1500": ffilter("highpass=f=1500"),
    "bandpass_500_5000": ffilter("highpass=f=500,lowpass=f=5000"),
    "gain_0.1": gain(0.1),
    "gain_10_clip": gain(10.0),
    "gain_10_clip_mp3_128": then(gain(10.0), codec(["-c:a", "libmp3lame", "-b:a", "128k"], "mp3")),
    "echo_0.5s_0.5": echo(0.5, 0.5),
    "crop_3s": crop(3.0),
    "speed_0.9": speed(0.9),
    "speed_1.1": speed(1.1),
}

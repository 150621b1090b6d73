"""Measurements on rendered audio, used by the quality tests and the benchmark."""

from __future__ import annotations

import numpy as np

from inference.render import SAMPLE_RATE

HOP = 64


def onset_envelope(audio: np.ndarray, n_fft: int = 2048, max_hz: float = 160.0) -> np.ndarray:
    """Low-band spectral flux: the summed rise of log-magnitude below ``max_hz`` per STFT
    frame (hop HOP samples). The kick (and bass) onsets rise; sustained sounds do not."""
    mono = audio.mean(axis=1) if audio.ndim == 2 else audio
    frames = 1 + (len(mono) - n_fft) // HOP
    index = np.arange(n_fft)[None, :] + HOP * np.arange(frames)[:, None]
    spectrum = np.abs(np.fft.rfft(mono[index] * np.hanning(n_fft), axis=1))[:, 1: int(max_hz * n_fft / SAMPLE_RATE) + 1]
    log_mag = np.log1p(1000 * spectrum)
    return np.maximum(0.0, np.diff(log_mag, axis=0, prepend=log_mag[:1])).sum(axis=1)


def _acf(env: np.ndarray) -> np.ndarray:
    env = env - env.mean()
    spectrum = np.fft.rfft(env, 2 * len(env))
    acf = np.fft.irfft(spectrum * np.conj(spectrum))[: len(env)]
    return acf / np.arange(len(env), 0, -1)  # unbiased


def _peak(acf: np.ndarray, around: float, width: float) -> float:
    lo, hi = max(1, int(around - width)), min(len(acf) - 2, int(around + width) + 1)
    i = lo + int(np.argmax(acf[lo:hi]))
    a, b, c = acf[i - 1], acf[i], acf[i + 1]
    denom = a - 2 * b + c
    return i + (0.5 * (a - c) / denom if denom else 0.0)


def estimate_tempo(audio: np.ndarray, low_bpm: float = 55.0, high_bpm: float = 210.0) -> float:
    """Tempo in BPM from the audio: autocorrelation of the onset envelope, refined on a
    lag of several beats (parabolic interpolation) for sub-percent precision."""
    env = onset_envelope(audio)
    acf = _acf(env)
    fps = SAMPLE_RATE / HOP
    lo, hi = int(fps * 60 / high_bpm), int(fps * 60 / low_bpm)
    period = lo + int(np.argmax(acf[lo:hi]))
    # A stronger downbeat makes the two-beat lag win; prefer the beat when it is nearly as strong.
    divided = True
    while divided:
        divided = False
        for d in (2, 3):
            sub = round(period / d)
            if sub >= lo and acf[sub - 1: sub + 2].max() >= 0.7 * acf[period]:
                period, divided = sub, True
                break
    beats = max(1, int(len(env) * 0.5 / period))  # refine on a lag of up to half the clip
    lag = _peak(acf, period * beats, period * 0.1)
    return 60.0 * fps * beats / lag


ONSET_LAG = 1_700  # samples from a frame's start to the note whose rise it shows first (log magnitude
# saturates, so a kick is seen as soon as it enters the window); measured on rendered kicks, tested


def fit_glide(audio: np.ndarray, low_bpm: float = 55.0, high_bpm: float = 210.0,
              step_bpm: float = 0.25, max_bar_change: float | None = None) -> tuple[float, float, int]:
    """(tempo_from, tempo_to, bars) of the beat grid that best explains the clip's onsets, for a
    clip of whole 4/4 bars whose tempo is constant or glides (``kit.tempo``: beat k of N at
    ``from + (to - from)(k + 1)/N``). Measured from the audio: for every start tempo and bar count,
    the end tempo is the one whose grid is exactly the clip's length; the grid scores the mean
    onset strength on its beats minus that half way between them (so neither half nor double the
    tempo fits: those put a beat on an off-beat or between beats). Beat 0 has no onset before it
    to see and is not scored. ``max_bar_change``: only glides a renderer can make, moving at most
    this fraction a bar (3% slack), so a grid that explains the onsets by an impossible glide is not
    the answer. ValueError when no such grid lasts as long as the clip."""
    env = onset_envelope(audio)
    length = len(audio)
    starts = np.arange(low_bpm, high_bpm + step_bpm / 2, step_bpm)
    best: tuple[float, float, float, int] = (-np.inf, 0.0, 0.0, 0)
    for bars in (1, 2, 4):
        n = 4 * bars
        fraction = (np.arange(n) + 1) / n
        lo, hi = np.full(len(starts), 20.0), np.full(len(starts), 400.0)
        for _ in range(40):  # the grid's length falls as the end tempo rises: bisect for the clip's length
            mid = (lo + hi) / 2
            grid = SAMPLE_RATE * 60 / (starts[:, None] + (mid - starts)[:, None] * fraction[None, :])
            too_long = grid.sum(axis=1) > length
            lo, hi = np.where(too_long, mid, lo), np.where(too_long, hi, mid)
        ends = (lo + hi) / 2
        beats = SAMPLE_RATE * 60 / (starts[:, None] + (ends - starts)[:, None] * fraction[None, :])
        edges = np.concatenate([np.zeros((len(starts), 1)), np.cumsum(beats, axis=1)], axis=1)
        on = _strength(env, edges[:, 1:-1])
        off = _strength(env, (edges[:, :-1] + edges[:, 1:]) / 2)
        possible = (ends >= low_bpm) & (ends <= high_bpm)
        if max_bar_change is not None:
            ratio, most, least = ends / starts, (1 + max_bar_change) ** bars, (1 - max_bar_change) ** bars
            possible &= (ratio <= most * 1.03) & (ratio >= least / 1.03)
        score = np.where(possible, on - off, -np.inf)
        i = int(np.argmax(score))
        if score[i] > best[0]:
            best = (float(score[i]), float(starts[i]), float(ends[i]), bars)
    if best[3] == 0:
        raise ValueError(f"no grid of 1, 2 or 4 bars at {low_bpm}-{high_bpm} BPM lasts {length} samples")
    return best[1], best[2], best[3]


def _strength(env: np.ndarray, at_samples: np.ndarray) -> np.ndarray:
    """Mean onset strength (the strongest of three frames around each position) per row of positions."""
    frames = np.rint((at_samples - ONSET_LAG) / HOP).astype(int)
    padded = np.concatenate([[0.0], env, [0.0]])
    frames = np.clip(frames + 1, 1, len(env))
    around = np.maximum(np.maximum(padded[frames - 1], padded[frames]), padded[frames + 1])
    valid = (at_samples - ONSET_LAG >= 0) & (at_samples - ONSET_LAG < len(env) * HOP)
    return np.where(valid, around, 0.0).sum(axis=1) / np.maximum(1, valid.sum(axis=1))


def max_join_jump(first: np.ndarray, second: np.ndarray) -> float:
    """Largest sample step across the join relative to the typical step inside the audio."""
    joined = np.concatenate([first[-256:], second[:256]])
    steps = np.abs(np.diff(joined, axis=0)).max(axis=1)
    join = float(steps[255])
    typical = float(np.percentile(steps, 99)) + 1e-9
    return join / typical

"""Symbolic figures of melodies for `make bench-music`: how alike two sets are, and how much of a
training work a melody copies. Pure: melodies are lists of (start, length, pitch) in sixteenths
and semitones from the tonic, as inference.music's notes and inference.train's corpus are.

- ``features``: the per-melody features of Yang & Lerch, "On the evaluation of generative models in
  music" (Neural Computing and Applications, 2020): pitch count, pitch-class histogram, pitch range,
  average pitch interval, note count per bar, average inter-onset interval, note-length histogram.
- ``overlapped_area``: per feature, the overlap of two probability densities (Gaussian kernel
  estimates): the distances within the reference set (every pair), and the distances between the
  compared set and the reference set (every pair); 1 when the compared set lies among the reference
  melodies as they lie among each other. ``mean_overlapped_area`` averages the seven features.
- ``longest_shared_run``: the longest run of consecutive (interval, duration) pairs a melody shares
  with any of a set (a melody of n notes has n - 1 pairs), and how many bars that run lasts.
- ``same_tune``: two harmonisations of one chorale tune share their melody; a held-out set "split by
  tune" keeps no work whose melody shares TUNE_RUN consecutive intervals with a training work.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
from scipy.stats import gaussian_kde

Melody = Sequence[tuple[int, int, int]]  # (start, length, pitch): sixteenths, semitones from the tonic
STEPS_PER_BAR = 16
LENGTH_BINS = (1, 2, 3, 4, 6, 8, 12, 16)  # note lengths in sixteenths; longer ones count in the last bin
HISTOGRAMS = ("pitch_class_histogram", "note_length_histogram")
TUNE_RUN = 14  # consecutive pitch intervals in common: one tune (a held-out chorale shares either a
# dozen or fewer with its closest training work, or fifteen and more: another harmonisation of its tune)


def features(melody: Melody) -> dict[str, float | np.ndarray]:
    notes = sorted(melody)
    pitches = np.array([p for _, _, p in notes])
    starts = np.array([s for s, _, _ in notes])
    lengths = np.array([length for _, length, _ in notes])
    bars = max(1.0, (starts[-1] + lengths[-1] - starts[0]) / STEPS_PER_BAR)
    pch = np.bincount(pitches % 12, minlength=12).astype(float)
    nlh = np.bincount([min(np.searchsorted(LENGTH_BINS, n), len(LENGTH_BINS) - 1) for n in lengths],
                      minlength=len(LENGTH_BINS)).astype(float)
    return {
        "pitch_count": float(len(set(pitches.tolist()))),
        "pitch_class_histogram": pch / pch.sum(),
        "pitch_range": float(pitches.max() - pitches.min()),
        "average_pitch_interval": float(np.abs(np.diff(pitches)).mean()) if len(pitches) > 1 else 0.0,
        "note_count_per_bar": len(notes) / bars,
        "average_inter_onset_interval": float(np.diff(starts).mean()) if len(starts) > 1 else 0.0,
        "note_length_histogram": nlh / nlh.sum(),
    }


def _distance(a: float | np.ndarray, b: float | np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)))


def _overlap(x: np.ndarray, y: np.ndarray) -> float:
    """The area under min(pdf_x, pdf_y) of two Gaussian kernel density estimates."""
    lo, hi = min(x.min(), y.min()), max(x.max(), y.max())
    spread = max(hi - lo, 1e-6)
    grid = np.linspace(lo - 0.25 * spread, hi + 0.25 * spread, 2000)
    rng = np.random.default_rng(0)  # a set whose distances are all equal has no density: jitter it
    pdfs = [gaussian_kde(v if np.ptp(v) > 0 else v + rng.normal(0, 1e-3 * spread, len(v)))(grid) for v in (x, y)]
    return float(np.trapezoid(np.minimum(*pdfs), grid))


def overlapped_area(compared: list[Melody], reference: list[Melody]) -> dict[str, float]:
    """Per feature: overlap of the reference's intra-set distances with the compared-to-reference ones."""
    fc, fr = [features(m) for m in compared], [features(m) for m in reference]
    out = {}
    for name in fr[0]:
        intra = np.array([_distance(a[name], b[name]) for a, b in itertools.combinations(fr, 2)])
        inter = np.array([_distance(a[name], b[name]) for a in fc for b in fr])
        out[name] = round(_overlap(intra, inter), 4)
    return out


def mean_overlapped_area(compared: list[Melody], reference: list[Melody]) -> float:
    return float(np.mean(list(overlapped_area(compared, reference).values())))


def _pairs(melody: Melody) -> list[tuple[int, int]]:
    notes = sorted(melody)
    return [(b[2] - a[2], b[1]) for a, b in itertools.pairwise(notes)]


def _intervals(melody: Melody) -> list[int]:
    return [b[2] - a[2] for a, b in itertools.pairwise(sorted(melody))]


def _longest_common_run(sequence: list, others: list[list]) -> int:
    """The largest k such that some k consecutive items of ``sequence`` occur in one of ``others``."""
    best, k = 0, 1
    while k <= len(sequence):
        grams = {tuple(o[i:i + k]) for o in others for i in range(len(o) - k + 1)}
        if not any(tuple(sequence[i:i + k]) in grams for i in range(len(sequence) - k + 1)):
            break
        best, k = k, k + 1
    return best


def longest_shared_run(melodies: list[Melody], against: list[Melody]) -> dict[str, float]:
    """The longest run of (interval, duration) pairs any of ``melodies`` shares with any of ``against``:
    in pairs, and in bars (the longest such shared run's total duration)."""
    others = [_pairs(m) for m in against]
    best_pairs, best_bars = 0, 0.0
    for melody in melodies:
        pairs = _pairs(melody)
        run = _longest_common_run(pairs, others)
        if run == 0 or run < best_pairs:
            continue
        grams = {tuple(o[i:i + run]) for o in others for i in range(len(o) - run + 1)}
        bars = max(sum(d for _, d in pairs[i:i + run]) for i in range(len(pairs) - run + 1)
                   if tuple(pairs[i:i + run]) in grams) / STEPS_PER_BAR
        best_bars = bars if run > best_pairs else max(best_bars, bars)
        best_pairs = run
    return {"pairs": best_pairs, "bars": round(best_bars, 2)}


def same_tune(melody: Melody, others: list[Melody]) -> bool:
    return _longest_common_run(_intervals(melody), [_intervals(o) for o in others]) >= TUNE_RUN

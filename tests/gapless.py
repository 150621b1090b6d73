"""How gaplessly a decoded stream joins its segments: the decoded rendition against the WAV masters
joined sample for sample (used by the media tests and `make bench-media`).

- ``max_join_gap_ms``: at each join, the larger of how far the audio after it is displaced in time
  (the lag, within +-5 ms, that best aligns the decoded with the master) and the longest run of
  near-silence the decoded has there while the master has sound.
- ``join_error_ratio``: the largest sample error at a join (from one AAC frame before the fragment
  boundary to one after the masters' join) over the largest error elsewhere (the codec's own
  noise): about 1 is no click; a gap or frames that do not overlap-add show as more.
- ``duration_error_ms_max``: at every segment boundary, the playlist's elapsed time (the
  fragments' durations added up, from the stream's first sample) against the masters' (their
  lengths added up): the cumulative drift. The stream starts with the encoder's priming frame and
  each fragment leaves its master's last 1,024-2,047 samples to the next (``kit.media``), so the
  two differ by less than one frame and never accumulate.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 44_100
SEARCH = 220  # +-5 ms
SILENT, SOUND = 1e-4, 1e-2


def measure(decoded: np.ndarray, priming: int, masters: list[np.ndarray], fragment_frames: list[int],
            frame: int = 1024) -> dict[str, float]:
    """``decoded``: the stream decoded from its first sample; ``priming``: where the first master
    sample is in it; ``fragment_frames``: each fragment's AAC frames, in order."""
    expected = sum(fragment_frames) * frame
    if abs(len(decoded) - expected) > frame:
        raise ValueError(f"the decoded stream has {len(decoded)} samples; its fragments hold {expected}")
    ref = np.concatenate(masters)[:, 0]
    out = decoded[priming:, 0]
    n = min(len(ref), len(out))
    ref, out = ref[:n], out[:n]
    error = np.abs(out - ref)
    boundaries = np.cumsum(fragment_frames)[:-1] * frame - priming  # where each next fragment starts
    joins = [(int(j), int(b)) for j, b in zip(np.cumsum([len(m) for m in masters])[:-1], boundaries, strict=True)
             if j + SEARCH + 4096 < n]
    near = np.zeros(n, bool)
    for j, b in joins:
        near[max(0, min(j, b) - frame):j + frame] = True
    interior = float(error[~near].max()) if (~near).any() else 0.0
    gaps, join_errors = [], []
    for j, b in joins:
        lag = _lag(out, ref, j)
        window = slice(max(0, min(j, b) - frame), j + frame)
        dropout = _longest(np.abs(out[window]) < SILENT) if np.abs(ref[window]).max() > SOUND else 0
        gaps.append(max(abs(lag), dropout) / SAMPLE_RATE * 1000)
        join_errors.append(float(error[window].max()))
    listed = np.cumsum(fragment_frames) * frame  # playlist time at each fragment's end
    mastered = np.cumsum([len(m) for m in masters])  # the masters' elapsed time there
    drift = np.abs(listed - mastered) / SAMPLE_RATE * 1000
    return {"joins": len(joins), "max_join_gap_ms": round(max(gaps, default=0.0), 3),
            "join_error_ratio": round(max(join_errors, default=0.0) / max(interior, 1e-9), 3),
            "interior_error_max": round(interior, 5), "duration_error_ms_max": round(float(drift.max()), 3)}


def _lag(out: np.ndarray, ref: np.ndarray, join: int, width: int = 4096) -> int:
    target = ref[join:join + width]
    lags = np.arange(-SEARCH, SEARCH + 1)
    errors = [float(np.mean((out[join + lag:join + lag + width] - target) ** 2)) for lag in lags]
    return int(lags[int(np.argmin(errors))])


def _longest(mask: np.ndarray) -> int:
    best = run = 0
    for value in mask:
        run = run + 1 if value else 0
        best = max(best, run)
    return best

"""The detector on excerpts of a session stream: segments of 2-4 s, each marked from its own start,
cut anywhere (the listener's stream as a player writes it, shared as a clip)."""

from __future__ import annotations

import numpy as np
import pytest
from tests.watermark_clips import music_clips

from kit.audio import encode_wav
from watermark.detector import WINDOW_S, report, windows_of
from watermark.keys import KeyRing
from watermark.scheme import SAMPLE_RATE, embed

SECRET = "30" * 32


@pytest.fixture(scope="module")
def stream() -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """Five segments of 2.2-4.3 s (the scheduler's lengths), each with its own payload, joined."""
    ring = KeyRing.from_mapping({"wk-test": SECRET}, "wk-test")
    lengths = [2.2, 4.3, 2.6, 3.4, 2.9]
    parts, spans, at = [], [], 0
    for i, (clip, seconds) in enumerate(zip(music_clips(len(lengths), 4.3, seed=11), lengths, strict=True)):
        segment = embed(clip[:int(seconds * SAMPLE_RATE)], ring.active, 0x5E600000 + i)
        parts.append(segment)
        spans.append((at, at + len(segment), 0x5E600000 + i))
        at += len(segment)
    return np.concatenate(parts), spans


@pytest.mark.parametrize(("start_s", "seconds"), [(0.7, 10.0), (3.1, 10.0), (1.9, 5.0), (0.0, 15.4)])
def test_an_excerpt_names_every_segment_with_2_s_inside_it(stream: tuple[np.ndarray, list[tuple[int, int, int]]],
                                                           start_s: float, seconds: float) -> None:
    audio, spans = stream
    lo, hi = int(start_s * SAMPLE_RATE), int((start_s + seconds) * SAMPLE_RATE)
    ring = KeyRing.from_mapping({"wk-test": SECRET}, "wk-test")
    found = report(encode_wav(audio[lo:hi], SAMPLE_RATE), ring, None)
    named = {int(h["payload_hex"], 16) for h in found["segments"]}
    inside = {p for a, b, p in spans if min(b, hi) - max(a, lo) >= 2 * SAMPLE_RATE}
    overlapping = {p for a, b, p in spans if min(b, hi) > max(a, lo)}
    assert inside and inside <= named <= overlapping, (found["segments"], inside)


def test_windows_cover_every_2_s_of_a_file_whole() -> None:
    rate = 100
    for seconds in (3.0, 4.5, 10.0, 12.5, 31.0):
        audio = np.zeros(int(seconds * rate))
        spans = [(int(offset * rate), int(offset * rate) + len(w)) for offset, w in windows_of(audio, rate)]
        assert any(a == 0 and b == len(audio) for a, b in spans) == (seconds <= 12)  # whole, up to 12 s
        for start in range(0, len(audio) - 2 * rate + 1):  # every 2 s stretch lies inside one window
            assert any(a <= start and start + 2 * rate <= b for a, b in spans), (seconds, start)
        assert all(b - a <= max(WINDOW_S * rate, len(audio) if seconds <= 12 else 0) for a, b in spans)

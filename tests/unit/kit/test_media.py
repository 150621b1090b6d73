"""The AAC rendition: fragments chained to their predecessors decode to the masters joined sample
for sample, with no gap, click or drift at the joins."""

from __future__ import annotations

import numpy as np
import pytest
from tests.gapless import measure

from kit import media


def masters(lengths: list[int], seed: int = 1) -> list[np.ndarray]:
    """Tones and noise continuing across the joins (as one piece of music cut into segments)."""
    rng, out, t0 = np.random.default_rng(seed), [], 0
    for n in lengths:
        t = (np.arange(n) + t0) / media.SAMPLE_RATE
        x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 1234.5 * t) + 0.02 * rng.standard_normal(n)
        out.append(np.stack([x, 0.8 * x], 1).astype(np.float32))
        t0 += n
    return out


def encode_session(parts: list[np.ndarray]) -> tuple[list[bytes], list[media.Placement]]:
    fragments, placements, after, tail = [], [], None, None
    for number, master in enumerate(parts, 1):
        placement = media.place(len(master), after)
        fragments.append(media.encode_fragment(master, placement, tail, number))
        placements.append(placement)
        after, tail = placement, master
    return fragments, placements


def test_placements_continue_each_other_and_never_drift() -> None:
    rng = np.random.default_rng(7)
    after, elapsed, listed = None, 0, 0
    for _ in range(500):  # about 40 minutes of 2-8 s segments
        samples = int(rng.integers(2 * media.SAMPLE_RATE, 8 * media.SAMPLE_RATE))
        placement = media.place(samples, after)
        assert after is None or (placement.start == after.end and placement.master_start == after.master_end)
        elapsed, listed = elapsed + samples, listed + placement.frames * media.FRAME
        assert -media.FRAME < listed - elapsed <= 0  # the playlist's elapsed time against the masters'
        assert media.context_samples(placement) <= 2 * media.WINDOW
        after = placement


def test_joined_fragments_decode_to_the_masters_without_gap_click_or_drift() -> None:
    # segment lengths of 4 bars at 151.2, 168 and 120 BPM, shortened to keep the test quick
    parts = masters([int(media.SAMPLE_RATE * 60 / bpm * 6) for bpm in (151.2, 168, 120, 97)])
    fragments, placements = encode_session(parts)
    assert all([kind for kind, _, _ in media.boxes(f)] == ["moof", "mdat"] for f in fragments)
    init = media.init_segment()
    assert [kind for kind, _, _ in media.boxes(init)] == ["ftyp", "moov"] and init == media.init_segment()
    audio, first = media.decode(init, fragments)
    assert first == 0 and len(audio) == sum(p.frames for p in placements) * media.FRAME
    report = measure(audio, media.PRIMING, parts, [p.frames for p in placements])
    assert report["joins"] == 3
    assert report["max_join_gap_ms"] <= 1
    assert report["join_error_ratio"] < 2  # about 1: the joins are as clean as the codec is elsewhere
    assert report["duration_error_ms_max"] < 1000 * media.FRAME / media.SAMPLE_RATE


def test_a_fragment_encoded_without_its_predecessor_is_a_click_the_measure_sees() -> None:
    """The measure is not blind: the same session with the second fragment encoded after silence
    instead of its predecessor's tail breaks at that join."""
    parts = masters([int(media.SAMPLE_RATE * 1.5)] * 3)
    fragments, placements = encode_session(parts)
    fragments[1] = media.encode_fragment(parts[1], placements[1], None, 2)
    audio, _ = media.decode(media.init_segment(), fragments)
    assert measure(audio, media.PRIMING, parts, [p.frames for p in placements])["join_error_ratio"] > 3


def test_audio_that_cannot_be_a_rendition_is_refused() -> None:
    with pytest.raises(media.MediaError, match="too short"):
        media.place(1000)
    placement = media.place(44_100)
    with pytest.raises(media.MediaError, match="stereo"):
        media.encode_fragment(np.zeros(44_100, np.float32), placement, None, 1)
    after = media.place(44_100, placement)
    with pytest.raises(media.MediaError, match="tail"):
        media.encode_fragment(np.zeros((44_100, 2), np.float32), after, np.zeros((100, 2), np.float32), 2)


def test_a_stream_with_a_new_timeline_decodes_every_fragment() -> None:
    # the third segment's predecessor has no rendition: it opens a new timeline (its media time
    # starts again at 0), which a demuxer reading the fragments as one file would overlap and drop
    parts = masters([30_000, 30_000, 30_000, 30_000])
    fragments, placements = encode_session(parts[:2])
    restarted, restarted_placements = encode_session(parts[2:])
    audio, first = media.decode(media.init_segment(), fragments + restarted)
    assert first == 0
    assert len(audio) == sum(p.frames for p in placements + restarted_placements) * media.FRAME

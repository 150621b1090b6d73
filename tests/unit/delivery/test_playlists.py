"""Playlists keep each listener's session in sequence order and forget a listener on erasure."""

from __future__ import annotations

from typing import Any

import m3u8
import pytest

from delivery.playlists import Playlists


def segment(listener: str, sequence: int, session: str = "s-1") -> dict[str, Any]:
    return {"segment_id": f"seg-{listener}-{session}-{sequence}", "listener_id": listener, "session_id": session,
            "sequence": sequence, "generated_at": sequence, "deadline": 1000}


def test_out_of_order_arrivals_are_sorted_and_redeliveries_ignored() -> None:
    playlists = Playlists()
    for n in (0, 2, 1):
        assert playlists.add(segment("a", n), 500) is not None
    assert playlists.add(segment("a", 1), 600) is None
    assert [e.segment["sequence"] for e in playlists.session("a")] == [0, 1, 2]


def test_an_erased_listener_has_nothing_left_and_others_keep_theirs() -> None:
    playlists = Playlists()
    for n in range(3):
        playlists.add(segment("a", n), 500)
        playlists.add(segment("b", n), 500)
    assert playlists.forget("a") == 3 and playlists.forget("a") == 0
    assert playlists.session("a") == [] and len(playlists.session("b")) == 3


def test_an_erasure_covers_segments_requested_before_it_even_when_rendered_after() -> None:
    playlists = Playlists()
    requested_before = {**segment("a", 1), "generated_at": 2_000, "requested_at": 900}
    requested_after = {**segment("a", 2), "generated_at": 2_500, "requested_at": 1_200}
    old_record = {**segment("a", 3), "generated_at": 800}  # v1: no request time, its render time stands in
    for record in (requested_before, requested_after, old_record):
        playlists.add(record, 3_000)
    assert playlists.forget("a", until_ms=1_000) == 2
    assert [e.segment["sequence"] for e in playlists.session("a")] == [2]


def version(sequence: int, requested: int, name: str, previous: str | None = None,
            new_timeline: bool = False) -> dict[str, Any]:
    """A segment with its rendition (``previous``: the segment id it was encoded to continue)."""
    frames = 86 + requested
    return {**segment("a", sequence), "segment_id": f"seg-{name}", "requested_at": requested,
            "audio": {"duration_ms": 2000 + requested, "sha256": name}, "previous_segment_id": previous,
            "rendition": {"sha256": f"{name}-aac", "init_sha256": "init", "frames": frames, "sample_rate_hz": 44_100,
                          "decode_time": 0, "discontinuity": previous is None or new_timeline}}


def test_the_newest_request_of_a_position_replaces_the_version_held_and_hls_keeps_the_first() -> None:
    from delivery.playlists import hls_media_playlist

    playlists = Playlists()
    playlists.add(version(0, 10, "0-first"), 500)
    playlists.add(version(1, 10, "1-first", "seg-0-first"), 500)
    # after its deadline: late, not an underrun
    replacement = playlists.add(version(1, 20, "1-second", "seg-0-first"), 1200)
    assert replacement is not None and replacement.replaces == "seg-1-first" and replacement.late
    assert replacement.listed["segment_id"] == "seg-1-first" and not replacement.first_late
    assert playlists.add(version(1, 15, "1-older"), 1300) is None  # an older version that came late
    assert playlists.add(version(1, 20, "1-second"), 1400) is None  # a redelivery
    assert [e.segment["segment_id"] for e in playlists.session("a")] == ["seg-0-first", "seg-1-second"]
    again = playlists.add(version(1, 30, "1-third"), 1500)
    assert again is not None and again.listed["segment_id"] == "seg-1-first"
    hls = hls_media_playlist(playlists.session("a"), lambda sha, ext: f"{sha}.{ext}")
    assert hls.splitlines()[-1] == "1-first-aac.m4s" and "#EXT-X-DISCONTINUITY" not in hls


def test_the_hls_playlist_is_valid_fmp4_and_breaks_only_where_the_stream_does() -> None:
    from delivery.playlists import hls_media_playlist

    playlists = Playlists()
    playlists.add(version(0, 10, "0"), 500)
    playlists.add(version(1, 10, "1", "seg-0"), 500)
    playlists.add(version(1, 20, "1-new", "seg-0"), 600)  # replanned: HLS keeps listing "1"
    playlists.add(version(2, 20, "2", "seg-1-new"), 700)  # encoded to follow the replacement: a break
    playlists.add(version(3, 20, "3", "seg-2"), 800)
    playlists.add(version(4, 20, "4", "seg-3", new_timeline=True), 900)  # its predecessor's rendition was lost
    playlists.add({**segment("a", 5), "audio": {"duration_ms": 2000, "sha256": "old"}}, 950)  # no rendition
    text = hls_media_playlist(playlists.session("a"), lambda sha, ext: f"https://cdn.example/{sha}.{ext}?sig=x")
    parsed = m3u8.loads(text)
    assert parsed.version == 7 and parsed.media_sequence == 0 and parsed.playlist_type is None
    assert [s.uri.split("/")[-1] for s in parsed.segments] == [f"{n}-aac.m4s?sig=x" for n in ("0", "1", "2", "3", "4")]
    assert [s.discontinuity for s in parsed.segments] == [False, False, True, False, True]
    assert {s.init_section.uri for s in parsed.segments} == {"https://cdn.example/init.mp4?sig=x"}
    assert text.count("#EXT-X-MAP") == 1
    durations = [s.duration for s in parsed.segments]
    assert durations[0] == pytest.approx(96 * 1024 / 44_100, abs=1e-5)
    assert all(round(d) <= parsed.target_duration for d in durations)  # RFC 8216, 4.3.3.1


def test_the_hls_playlist_slides_a_window_of_the_newest_segments() -> None:
    from delivery.playlists import HLS_WINDOW, hls_media_playlist

    playlists = Playlists()
    for n in range(HLS_WINDOW + 5):
        playlists.add(version(n, 10, str(n), f"seg-{n - 1}" if n else None), 500 + n)
    parsed = m3u8.loads(hls_media_playlist(playlists.session("a"), lambda sha, ext: f"{sha}.{ext}"))
    assert parsed.media_sequence == 5 and len(parsed.segments) == HLS_WINDOW
    assert parsed.segments[0].uri == "5-aac.m4s" and not any(s.discontinuity for s in parsed.segments)
    assert sum(s.duration for s in parsed.segments) >= 3 * parsed.target_duration  # RFC 8216, 6.2.2


def test_an_erasure_also_forgets_the_first_version_a_kept_replacement_stands_for() -> None:
    playlists = Playlists()
    playlists.add(version(0, 100, "old"), 500)
    playlists.add(version(0, 300, "new"), 600)  # requested after the erasure below
    assert playlists.forget("a", until_ms=200) == 1
    [kept] = playlists.session("a")
    assert kept.segment["segment_id"] == "seg-new" and kept.listed["segment_id"] == "seg-new"

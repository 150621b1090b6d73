"""Playlists keep each listener's session in sequence order and forget a listener on erasure."""

from __future__ import annotations

from typing import Any

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

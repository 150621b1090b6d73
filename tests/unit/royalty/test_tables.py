"""Royalty's reference tables stay bounded: segments past the play horizon are dropped, and a
segment id keeps its first record."""

from __future__ import annotations

from tests.royalty_fixtures import LISTENERS, segment_record

from royalty.tables import ERASURES, SEGMENTS, SWEEP_EVERY, ReferenceTables

DAY = 86_400_000


def test_segments_past_the_play_horizon_are_swept_and_the_first_record_wins() -> None:
    tables = ReferenceTables(horizon_ms=30 * DAY)
    now = 1_800_000_000_000
    old, fresh = segment_record("seg-old", [("wk-1", 1_000_000)]), segment_record("seg-new", [("wk-2", 1_000_000)])
    tables.apply(SEGMENTS, {}, {**old, "generated_at": now - 32 * DAY}, 0)
    tables.apply(SEGMENTS, {}, {**fresh, "generated_at": now - DAY}, 0)
    tables.apply(SEGMENTS, {}, {**fresh, "generated_at": now - DAY, "listener_id": "x" * 64}, 0)  # a later record
    assert tables.segments["seg-new"].listener_id == LISTENERS[0]  # the first one stays
    assert tables.sweep(now) == 1 and set(tables.segments) == {"seg-new"}


def test_a_flood_of_segments_triggers_sweeps_on_its_own() -> None:
    tables = ReferenceTables(horizon_ms=0)
    record = segment_record("x", [("wk-1", 1_000_000)])
    for n in range(SWEEP_EVERY):
        tables.apply(SEGMENTS, {}, {**record, "segment_id": f"s-{n}", "generated_at": 0}, 0)
    assert len(tables.segments) == 0  # all long past the horizon: the sweep at the 10,000th removed them


def test_an_erasure_drops_the_listener_s_segments_then_and_after_a_re_read() -> None:
    tables, now = ReferenceTables(horizon_ms=30 * DAY), 1_800_000_000_000
    record = segment_record("seg-a", [("wk-1", 1_000_000)])
    other = {**segment_record("seg-b", [("wk-1", 1_000_000)]), "listener_id": "b" * 64, "generated_at": now}
    tables.apply(SEGMENTS, {}, {**record, "generated_at": now}, 0)
    tables.apply(SEGMENTS, {}, other, 0)
    erasure = {"erasure_id": "e-1", "listener_id": LISTENERS[0], "requested_at": now + 1_000}
    tables.apply(ERASURES, {"listener_id": LISTENERS[0]}, erasure, now + 1_000)
    assert set(tables.segments) == {"seg-b"} and tables.newly_erased == [LISTENERS[0]]
    assert tables.erased_before(LISTENERS[0], now + 500) and not tables.erased_before(LISTENERS[0], now + 2_000)
    tables.apply(SEGMENTS, {}, {**record, "generated_at": now}, 0)  # read again after a restart: stays gone
    later = {**segment_record("seg-c", [("wk-1", 1_000_000)]), "generated_at": now + 5_000}  # they came back
    tables.apply(SEGMENTS, {}, later, 0)
    rendered_late = {**segment_record("seg-d", [("wk-1", 1_000_000)]), "generated_at": now + 5_000,
                     "requested_at": now + 900}  # requested before the erasure: covered by it
    tables.apply(SEGMENTS, {}, rendered_late, 0)
    assert set(tables.segments) == {"seg-b", "seg-c"}

"""Royalty on the real broker: lines, ledger, consent at play time, waiting inputs, DLQ."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import replace
from typing import Any

import pytest
from tests.kafka_helpers import read_all, read_to_end
from tests.royalty_fixtures import LISTENERS, Catalog, consent_record, play_record, write_ledger

from kit.serde import TopicSerde
from kit.settings import KafkaSettings
from royalty.rates import RateCard
from royalty.rules import position as play_position
from royalty.service import RoyaltyProcessor, RoyaltySettings

RATES = RateCard.load()


def run_royalty(kafka: KafkaSettings, **changes: Any) -> RoyaltyProcessor:
    settings = replace(RoyaltySettings(instance_id=f"test-{uuid.uuid4().hex[:6]}",
                                       group_id=f"royalty-{uuid.uuid4().hex[:6]}"), **changes)
    processor = RoyaltyProcessor(kafka, settings, RATES)
    processor.run(idle_exit_s=4)
    return processor


def position(entry: dict[str, Any]) -> str:
    """The seed royalty rounded a play with: its position on listener.plays.v1."""
    return play_position(entry["source_partition"], entry["source_offset"])


def decoded(kafka: KafkaSettings, topic: str, expected: int, timeout_s: float = 15) -> list[dict[str, Any]]:
    serde = TopicSerde.for_topic(topic, kafka)
    return [serde.decode_value(m.value()) for m in read_all(kafka, serde.topic, expected, timeout_s)]


def test_plays_become_exact_lines_and_ledger_entries(isolated: KafkaSettings) -> None:
    catalog = Catalog(isolated)
    now = int(time.time() * 1000) - 60_000
    plays = catalog.plays(40, now)
    skipped = {**play_record(str(uuid.uuid4()), "seg-0", now - 600_000, ms_played=1_500), "completed": False}
    flagged = play_record(str(uuid.uuid4()), "seg-0", now - 500_000, fraud=("played_longer_than_elapsed",))
    parallel = {**plays[0], "play_id": str(uuid.uuid4())}  # the same seconds again under another play id
    catalog_play = play_record(str(uuid.uuid4()), None, now, work_id="wk-3", territory="US", tier="FREE")
    short = play_record(str(uuid.uuid4()), None, now, work_id="wk-3", ms_played=10_000)
    catalog.send_plays([*plays, skipped, flagged, parallel, catalog_play, short, plays[0]])  # plays[0]: a repeat
    run_royalty(isolated)

    ledger = {e["play_id"]: e for e in decoded(isolated, "royalty.play-ledger.v1", 45)}
    assert len(ledger) == 45
    assert ledger[short["play_id"]]["outcome"] == "UNPAID" and ledger[short["play_id"]]["reason"] == "short_play"
    assert ledger[flagged["play_id"]]["reason"] == "fraud_flagged"
    assert ledger[parallel["play_id"]]["reason"] == "overlaps_paid_time"
    assert ledger[skipped["play_id"]]["outcome"] == "PAID"  # skipped after 1.5 s: 1.5 s is paid
    assert (ledger[skipped["play_id"]]["heard_ms"], ledger[skipped["play_id"]]["paid_ms"]) == (1_500, 1_500)
    assert ledger[plays[0]["play_id"]]["outcome"] == "PAID"  # the repeat did not overwrite the first entry

    lines = decoded(isolated, "royalty.events.v1", 10_000, timeout_s=8)
    per_play = Counter()
    for line in lines:
        per_play[line["play_id"]] += line["amount_micros"]
        assert sum(w["amount_micros"] for w in line["works"]) == line["amount_micros"]
    assert len({(x["play_id"], x["rights_holder_id"], x["right_type"]) for x in lines}) == len(lines)
    eu_premium = RATES.price("DE", "PREMIUM", now)
    for play in plays:  # 8 s heard of each 8 s segment, at 429 + 714 µ€ a minute: 152.4 µ€
        entry = ledger[play["play_id"]]
        assert (entry["segment_id"], entry["heard_ms"], entry["paid_ms"]) == (play["segment_id"], 8_000, 8_000)
        assert per_play[play["play_id"]] == entry["total_micros"] == \
            eu_premium.total_micros("AI_SEGMENT", 8_000, position(entry))
        assert entry["total_micros"] in (151, 152, 153, 154)
    assert per_play[catalog_play["play_id"]] == 1100  # US free, per play
    assert ledger[catalog_play["play_id"]]["paid_ms"] is None
    assert not {short["play_id"], flagged["play_id"], parallel["play_id"]} & set(per_play)


def test_an_opted_out_artist_is_paid_for_earlier_plays_only(isolated: KafkaSettings) -> None:
    catalog = Catalog(isolated, works=3, segments=0)
    catalog.add_segment("seg-x", [("wk-0", 600_000), ("wk-1", 400_000)])  # wk-0 COMPOSITION: rh-t0
    opt_out_at = int(time.time() * 1000) - 600_000
    catalog.produce("catalog.consent.v1", {"rights_holder_id": "rh-t0", "work_id": None},
                    consent_record("rh-t0", False, opt_out_at))
    before = play_record(str(uuid.uuid4()), "seg-x", opt_out_at - 120_000)
    after = play_record(str(uuid.uuid4()), "seg-x", opt_out_at + 60_000)
    catalog.send_plays([before, after])
    run_royalty(isolated)
    lines = decoded(isolated, "royalty.events.v1", 100, timeout_s=8)
    holders = {p: {x["rights_holder_id"] for x in lines if x["play_id"] == p}
               for p in (before["play_id"], after["play_id"])}
    assert "rh-t0" in holders[before["play_id"]]
    assert "rh-t0" not in holders[after["play_id"]]
    after_total = sum(x["amount_micros"] for x in lines if x["play_id"] == after["play_id"])
    rate = RATES.price("DE", "PREMIUM", after["started_at"])
    [entry] = [e for e in decoded(isolated, "royalty.play-ledger.v1", 2) if e["play_id"] == after["play_id"]]
    assert after_total == rate.total_micros("AI_SEGMENT", 8_000, position(entry))  # wk-1 took it all (renormalised)
    assert all(w["work_id"] == "wk-1" for x in lines if x["play_id"] == after["play_id"] for w in x["works"])


def test_a_play_waits_for_its_segment_and_is_dead_lettered_when_it_never_comes(isolated: KafkaSettings) -> None:
    catalog = Catalog(isolated, works=3, segments=0)
    now = int(time.time() * 1000) - 60_000
    late = play_record(str(uuid.uuid4()), "seg-late", now)
    never = play_record(str(uuid.uuid4()), "seg-never", now + 8_000)  # the listener's next segment
    catalog.send_plays([late])
    settings = RoyaltySettings(instance_id=f"w-{uuid.uuid4().hex[:6]}", group_id=f"g-{uuid.uuid4().hex[:6]}",
                               wait_retry_s=0.5, max_wait_s=6)
    processor = RoyaltyProcessor(isolated, settings, RATES)
    import threading

    thread = threading.Thread(target=processor.run, kwargs={"idle_exit_s": 12})
    thread.start()
    time.sleep(4)  # the play is waiting: its segment is not known
    catalog.add_segment("seg-late", [("wk-0", 1_000_000)])
    catalog.send_plays([never])
    thread.join(timeout=60)

    ledger = {e["play_id"]: e for e in decoded(isolated, "royalty.play-ledger.v1", 2)}
    assert ledger[late["play_id"]]["outcome"] == "PAID"
    assert ledger[never["play_id"]]["outcome"] == "DEAD_LETTERED"
    assert "segment_provenance_unknown after waiting 6s" in ledger[never["play_id"]]["reason"]
    [dead] = read_all(isolated, isolated.topic("listener.plays.v1.dlq"), 1)
    assert TopicSerde.for_topic("listener.plays.v1", isolated).decode_value(dead.value())["play_id"] == never["play_id"]
    assert dict(dead.headers())["dlq.service"] == b"royalty"

    # The missing segment arrives after all; the dead letter is replayed and paid, once.
    from royalty.replay import replay

    catalog.add_segment("seg-never", [("wk-1", 1_000_000)])
    assert replay(isolated) == 1
    run_royalty(isolated, group_id=settings.group_id, instance_id=settings.instance_id)
    assert replay(isolated) == 1  # replaying again: the play is decided now, a duplicate
    run_royalty(isolated, group_id=settings.group_id, instance_id=settings.instance_id)
    entries = [e for e in decoded(isolated, "royalty.play-ledger.v1", 5, timeout_s=8)
               if e["play_id"] == never["play_id"]]
    assert [e["outcome"] for e in entries] == ["DEAD_LETTERED", "PAID"]  # the second replay wrote nothing
    lines = [x for x in decoded(isolated, "royalty.events.v1", 100, timeout_s=5) if x["play_id"] == never["play_id"]]
    assert lines and len({(x["rights_holder_id"], x["right_type"]) for x in lines}) == len(lines)


def test_undecodable_plays_go_to_the_dlq_and_the_partition_moves_on(isolated: KafkaSettings) -> None:
    catalog = Catalog(isolated, works=3, segments=0)
    catalog.add_segment("seg-x", [("wk-0", 1_000_000)])
    serde = TopicSerde.for_topic("listener.plays.v1", isolated)
    key = serde.encode_key({"listener_id": "same"})
    catalog.producer.produce_raw(serde.topic, key, b"garbage")
    good = play_record(str(uuid.uuid4()), "seg-x", int(time.time() * 1000) - 60_000)
    catalog.producer.produce(serde, {"listener_id": "same"}, good)
    assert catalog.producer.flush(30) == 0
    run_royalty(isolated)
    [dead] = read_all(isolated, isolated.topic("listener.plays.v1.dlq"), 1)
    assert dead.value() == b"garbage" and dict(dead.headers())["dlq.reason_class"] == b"undecodable"
    assert [e["play_id"] for e in decoded(isolated, "royalty.play-ledger.v1", 1)] == [good["play_id"]]


def test_statements_from_the_committed_topics_reconcile(isolated: KafkaSettings) -> None:
    from royalty.statement import build, period_bounds, read_committed

    catalog = Catalog(isolated)
    now = int(time.time() * 1000) - 60_000
    plays = catalog.plays(30, now)
    plays[0].update(ms_played=1_000, completed=False)  # skipped after a second: that second is paid
    plays[1].update(ms_played=1_000, completed=True)  # "completed" after a second: not heard, not paid
    catalog.send_plays(plays)
    run_royalty(isolated)
    period = time.strftime("%Y-%m", time.gmtime(now / 1000))
    ledger = {e["play_id"]: e for e in read_committed(isolated, "royalty.play-ledger.v1")}
    reports, figures = build(read_committed(isolated, "royalty.events.v1"), list(ledger.values()), RATES,
                             *period_bounds(period))
    assert figures["reconciled"], figures["problems"]
    assert figures["currencies"]["EUR"]["paid_plays"] == 29
    rate = RATES.price("DE", "PREMIUM", now)
    expected = sum(rate.total_micros("AI_SEGMENT", 1_000 if n == 0 else 8_000, position(ledger[p["play_id"]]))
                   for n, p in enumerate(plays) if n != 1)
    assert figures["currencies"]["EUR"]["reports_micros"] == expected
    assert reports


def test_an_erasure_reaches_royalty_and_survives_a_restart(isolated: KafkaSettings) -> None:
    catalog = Catalog(isolated, works=3, segments=0)
    catalog.add_segment("seg-e", [("wk-0", 1_000_000)])
    now = int(time.time() * 1000) - 600_000
    first = play_record(str(uuid.uuid4()), "seg-e", now)
    parallel = {**first, "play_id": str(uuid.uuid4())}
    catalog.send_plays([first, parallel])
    group, instance = f"royalty-{uuid.uuid4().hex[:6]}", f"test-{uuid.uuid4().hex[:6]}"
    run_royalty(isolated, group_id=group, instance_id=instance)
    erasures = TopicSerde.for_topic("listener.erasures.v1", isolated)
    catalog.producer.produce(erasures, {"listener_id": LISTENERS[0]},
                             {"erasure_id": str(uuid.uuid4()), "listener_id": LISTENERS[0],
                              "requested_at": int(time.time() * 1000)})
    again = {**first, "play_id": str(uuid.uuid4())}  # the same minutes, reported again after the erasure
    catalog.send_plays([again])
    restarted = run_royalty(isolated, group_id=group, instance_id=instance)  # tables and ledger read again
    ledger = {e["play_id"]: e for e in decoded(isolated, "royalty.play-ledger.v1", 3)}
    assert ledger[first["play_id"]]["outcome"] == "PAID"
    assert ledger[parallel["play_id"]]["reason"] == "overlaps_paid_time"  # before the erasure: paid time held
    assert ledger[again["play_id"]]["reason"] == "listener_erased"  # after it: nothing of theirs is paid again
    assert "seg-e" not in restarted.tables.segments and LISTENERS[0] in restarted.tables.erased  # also after a restart


def test_an_idle_instance_on_an_empty_plays_topic_is_not_taken_for_a_stalled_one(
        isolated: KafkaSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Empty partitions have no position (nothing consumed yet). Two stall checks (one every
    STALL_CHECK_S idle) used to take that for a stalled assignment and exit: on a fresh cluster both
    scale-out instances did, before any play arrived."""
    monkeypatch.setattr("royalty.service.STALL_CHECK_S", 1.0)  # checks every second: the same two checks, sooner
    from royalty.service import STALL_CHECK_S

    started = time.monotonic()  # run_royalty's 4 s idle exit is too soon for two checks
    settings = RoyaltySettings(instance_id=f"test-{uuid.uuid4().hex[:6]}", group_id=f"royalty-{uuid.uuid4().hex[:6]}")
    RoyaltyProcessor(isolated, settings, RATES).run(idle_exit_s=2.5 * STALL_CHECK_S)  # StalledAssignment before
    assert time.monotonic() - started >= 2.5 * STALL_CHECK_S


def test_the_ledger_loads_off_the_poll_loop_and_every_decided_play_stays_decided(isolated: KafkaSettings) -> None:
    """A new assignment's ledger is read in a thread while the poll loop keeps turning (the group
    sees a live member however long the window is); the partitions resume once it is installed,
    and a replay of any ledgered play id is a duplicate, paid nothing."""
    catalog = Catalog(isolated, works=3, segments=0)
    catalog.add_segment("seg-new", [("wk-0", 1_000_000)])
    play_ids, segments = write_ledger(isolated, 60_000)
    now = int(time.time() * 1000) - 600_000
    replayed = play_record(play_ids[12_345], "seg-new", now)  # a ledgered id, posted again
    fresh = play_record(str(uuid.uuid4()), "seg-new", now)
    catalog.send_plays([replayed, fresh])
    settings = RoyaltySettings(instance_id=f"test-{uuid.uuid4().hex[:6]}", group_id=f"royalty-{uuid.uuid4().hex[:6]}")
    processor = RoyaltyProcessor(isolated, settings, RATES)
    processor.tables.segments.update(segments)  # as the start-up catch-up would hold them
    processor.run(idle_exit_s=4)

    assert (processor.stats.loads, processor.stats.loaded_entries) == (1, 60_000)
    assert processor.stats.turns_while_loading >= 2  # the loop polled on while the ledger was read
    ledgered = set(play_ids)
    ledger = TopicSerde.for_topic("royalty.play-ledger.v1", isolated)
    new_entries = [e for e in (ledger.decode_value(m.value()) for m in read_to_end(isolated, ledger.topic))
                   if e["play_id"] not in ledgered]
    assert [(e["play_id"], e["outcome"]) for e in new_entries] == [(fresh["play_id"], "PAID")]
    lines = decoded(isolated, "royalty.events.v1", 100, timeout_s=6)
    assert {x["play_id"] for x in lines} == {fresh["play_id"]}

"""Every kind of bad telemetry, play and consent is refused with its field and reason."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from ingest.validation import (
    Invalid,
    TimeWindow,
    claimed_user_id,
    parse_consent,
    parse_play,
    parse_telemetry,
    parse_token_request,
)

NOW = 1_795_000_000_000
WINDOW = TimeWindow(max_future_ms=120_000, max_age_ms=3 * 86_400_000)


def telemetry(**changes: Any) -> dict[str, Any]:
    item = {"event_id": "0d6f7c1e-2b5a-4f7e-9a11-3c2d4e5f6a7b", "user_id": "alice@example.com",
            "session_id": "s-1", "event_time": NOW - 1000, "heart_rate_bpm": 140, "cadence_spm": 170,
            "activity": "RUNNING"}
    item.update(changes)
    return {k: v for k, v in item.items() if v is not ...}


def play(**changes: Any) -> dict[str, Any]:
    item = {"play_id": "c8e2f0a4-1d3b-4c5e-8f7a-6b9d0e1f2a3b", "user_id": "alice@example.com",
            "content_kind": "AI_SEGMENT", "segment_id": "seg-3f1e2d4c", "started_at": NOW - 60_000,
            "ms_played": 45_000, "completed": True, "territory": "DE", "subscription_tier": "PREMIUM"}
    item.update(changes)
    return {k: v for k, v in item.items() if v is not ...}


def test_a_play_is_identified_by_listener_and_id_on_the_topic() -> None:
    event = parse_play(play(), NOW, WINDOW)
    alice, bob = (event.record(x * 64, "PREMIUM", "DE", NOW)["play_id"] for x in "ab")
    assert alice != bob  # bob posting alice's id cannot make her play a duplicate
    assert alice == event.record("a" * 64, "FREE", "US", NOW)["play_id"] == \
        parse_play(play(play_id=event.play_id.upper()), NOW, WINDOW).record("a" * 64, "PREMIUM", "DE", NOW)["play_id"]
    assert str(uuid.UUID(alice)) == alice and alice != event.play_id


def test_a_valid_sample_becomes_a_record_without_the_user_id() -> None:
    event = parse_telemetry(telemetry(), NOW, WINDOW)
    record = event.record("f" * 64, NOW, None)
    assert record["listener_id"] == "f" * 64
    assert "alice@example.com" not in repr(record)
    assert record["session_mode"] == "MATCH" and record["guide_target"] == "NONE"


def test_sensors_are_optional() -> None:
    event = parse_telemetry(telemetry(heart_rate_bpm=None, cadence_spm=...), NOW, WINDOW)
    assert event.heart_rate_bpm is None and event.cadence_spm is None


@pytest.mark.parametrize(("changes", "field", "reason"), [
    ({"heart_rate_bpm": 24}, "heart_rate_bpm", "24 is outside 25-250"),
    ({"heart_rate_bpm": 251}, "heart_rate_bpm", "251 is outside 25-250"),
    ({"heart_rate_bpm": 80.5}, "heart_rate_bpm", "must be a whole number"),
    ({"heart_rate_bpm": "80"}, "heart_rate_bpm", "must be a whole number"),
    ({"heart_rate_bpm": True}, "heart_rate_bpm", "must be a whole number"),
    ({"cadence_spm": -1}, "cadence_spm", "-1 is outside 0-260"),
    ({"cadence_spm": 261}, "cadence_spm", "261 is outside 0-260"),
    ({"event_id": "not-a-uuid"}, "event_id", "must be a UUID"),
    ({"event_id": ...}, "event_id", "is required"),
    ({"session_id": "-starts-with-dash"}, "session_id", "must match"),
    ({"session_id": "s" * 65}, "session_id", "must match"),
    ({"event_time": NOW + 120_001}, "event_time", "in the future"),
    ({"event_time": NOW - 3 * 86_400_000 - 1}, "event_time", "older than the 72 h"),
    ({"event_time": "2026-11-24T00:00:00Z"}, "event_time", "epoch milliseconds"),
    ({"activity": "DANCING"}, "activity", "must be one of"),
    ({"session_mode": "FOLLOW"}, "session_mode", "must be one of"),
    ({"guide_target": "SLEEP"}, "guide_target", "must be NONE in MATCH sessions"),
    ({"device": "d" * 65}, "device", "at most 64 characters"),
    ({"music": "yes"}, "music", "must be true or false"),
])
def test_bad_telemetry_names_field_and_reason(changes: dict[str, Any], field: str, reason: str) -> None:
    with pytest.raises(Invalid) as exc:
        parse_telemetry(telemetry(**changes), NOW, WINDOW)
    assert exc.value.field == field
    assert reason in exc.value.reason


@pytest.mark.parametrize("item", [None, [], "event", 42])
def test_an_item_that_is_not_an_object_is_invalid(item: Any) -> None:
    with pytest.raises(Invalid, match=r"\$: must be a JSON object"):
        parse_telemetry(item, NOW, WINDOW)


def test_valid_plays_and_the_impossible_duration_flag() -> None:
    assert parse_play(play(), NOW, WINDOW).fraud_flags == ()
    assert parse_play(play(content_kind="CATALOG_WORK", segment_id=None, work_id="wk-1"),
                      NOW, WINDOW).work_id == "wk-1"
    flagged = parse_play(play(started_at=NOW - 10_000, ms_played=600_000), NOW, WINDOW)
    assert flagged.fraud_flags == ("played_longer_than_elapsed",)


@pytest.mark.parametrize(("changes", "field", "reason"), [
    ({"content_kind": "PODCAST"}, "content_kind", "must be one of"),
    ({"segment_id": ...}, "segment_id", "is required"),
    ({"work_id": "wk-1"}, "work_id", "must be absent for AI_SEGMENT"),
    ({"content_kind": "CATALOG_WORK", "work_id": "wk-1"}, "segment_id", "must be absent for CATALOG_WORK"),
    ({"ms_played": -5}, "ms_played", "outside"),
    ({"completed": "yes"}, "completed", "true or false"),
    ({"play_id": 7}, "play_id", "must be a UUID"),
])
def test_bad_plays_name_field_and_reason(changes: dict[str, Any], field: str, reason: str) -> None:
    with pytest.raises(Invalid) as exc:
        parse_play(play(**changes), NOW, WINDOW)
    assert exc.value.field == field
    assert reason in exc.value.reason


def test_consent_defaults_to_now_and_refuses_the_past() -> None:
    consent = parse_consent("rh-demo-0007", {"ai_training": True, "ai_generation": False, "likeness": False},
                            NOW, 120_000)
    assert consent.effective_from == NOW and consent.work_id is None
    with pytest.raises(Invalid, match="cannot be in the past"):
        parse_consent("rh-1", {"ai_training": True, "ai_generation": True, "likeness": True,
                               "effective_from": NOW - 3_600_000}, NOW, 120_000)
    with pytest.raises(Invalid, match="ai_generation: is required"):
        parse_consent("rh-1", {"ai_training": True, "likeness": True}, NOW, 120_000)
    with pytest.raises(Invalid, match="rights_holder_id"):
        parse_consent("../etc", {}, NOW, 120_000)


@pytest.mark.parametrize(("changes", "field", "reason"), [
    ({"user_id": ""}, "user_id", "must match"),
    ({"user_id": "has space"}, "user_id", "must match"),
    ({"user_id": "x" * 129}, "user_id", "must match"),
    ({"territory": "Germany"}, "territory", "ISO 3166-1 alpha-2"),
    ({"territory": "de"}, "territory", "ISO 3166-1 alpha-2"),
    ({"subscription_tier": "GOLD"}, "subscription_tier", "must be one of"),
    ({"subscription_tier": None}, "subscription_tier", "is required"),
])
def test_bad_token_requests_name_field_and_reason(changes: dict[str, Any], field: str, reason: str) -> None:
    good = {"user_id": "alice@example.com", "subscription_tier": "PREMIUM", "territory": "DE"}
    assert parse_token_request(good).app_user_id == "alice@example.com"
    with pytest.raises(Invalid) as exc:
        parse_token_request({**good, **changes})
    assert exc.value.field == field
    assert reason in exc.value.reason


def test_a_claimed_user_id_is_optional_but_well_formed() -> None:
    assert claimed_user_id({"event_id": "x"}) is None and claimed_user_id("not an object") is None
    assert claimed_user_id({"user_id": "alice@example.com"}) == "alice@example.com"
    with pytest.raises(Invalid, match="must match"):
        claimed_user_id({"user_id": "has space"})

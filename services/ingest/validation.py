"""Pure validation of what listener apps and rights holders send.

Each ``parse_*`` function takes one decoded JSON item and either returns a typed
event or raises ``Invalid(field, reason)`` naming the first problem found. No
I/O, no clock: the caller passes ``now_ms`` and the limits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from kit.auth import listener_play_id
from kit.physiology import CADENCE_SPM, HEART_RATE_BPM

ACTIVITIES = ("UNKNOWN", "RESTING", "WALKING", "RUNNING", "CYCLING", "WORKOUT", "SLEEPING")
SESSION_MODES = ("MATCH", "GUIDE")
GUIDE_TARGETS = ("NONE", "WARM_UP", "STEADY", "COOL_DOWN", "SLEEP")
CONTENT_KINDS = ("AI_SEGMENT", "CATALOG_WORK")
TIERS = ("FREE", "PREMIUM", "FAMILY", "STUDENT")

MAX_MS_PLAYED = 24 * 3_600_000  # one play cannot last a day
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
USER_ID_PATTERN = re.compile(r"[\x21-\x7e]{1,128}")  # printable ASCII, no spaces
TERRITORY_PATTERN = re.compile(r"[A-Z]{2}")
UUID_PATTERN = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
MAX_DEVICE_CHARS = 64


class Invalid(ValueError):
    """An item is unacceptable; ``field`` names the offending field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class TimeWindow:
    """Accepted device times: at most ``max_future_ms`` ahead of now, at most ``max_age_ms`` old."""

    max_future_ms: int
    max_age_ms: int


# Not frozen: a frozen dataclass's __init__ costs ~1.5 us more per event on the hot path.
@dataclass(slots=True)
class Telemetry:
    event_id: str
    session_id: str
    event_time: int
    heart_rate_bpm: int | None
    cadence_spm: int | None
    activity: str
    session_mode: str
    guide_target: str
    device: str | None
    music: bool

    def record(self, listener_id: str, received_time: int, device: str | None) -> dict[str, Any]:
        """The listener.telemetry.v1 value: the pseudonymous listener id from the token, and ``device``
        as the caller pseudonymised it (free text from a client never reaches a topic in clear)."""
        return {
            "event_id": self.event_id, "listener_id": listener_id, "session_id": self.session_id,
            "event_time": self.event_time, "received_time": received_time,
            "heart_rate_bpm": self.heart_rate_bpm, "cadence_spm": self.cadence_spm, "activity": self.activity,
            "session_mode": self.session_mode, "guide_target": self.guide_target, "device": device,
            "music": self.music,
        }


@dataclass(slots=True)
class Play:
    play_id: str
    content_kind: str
    segment_id: str | None
    work_id: str | None
    started_at: int
    ms_played: int
    completed: bool
    fraud_flags: tuple[str, ...]

    def record(self, listener_id: str, subscription_tier: str, territory: str, received_time: int) -> dict[str, Any]:
        """The listener.plays.v1 value; listener, tier and territory come from the listener token, and the
        play id is the listener's (``kit.auth.listener_play_id``: a play is identified by listener and id)."""
        return {
            "play_id": listener_play_id(listener_id, self.play_id), "listener_id": listener_id,
            "content_kind": self.content_kind,
            "segment_id": self.segment_id, "work_id": self.work_id, "started_at": self.started_at,
            "ms_played": self.ms_played, "completed": self.completed, "territory": territory,
            "subscription_tier": subscription_tier, "fraud_flags": list(self.fraud_flags),
            "received_time": received_time,
        }


@dataclass(frozen=True)
class Consent:
    rights_holder_id: str
    work_id: str | None
    ai_training: bool
    ai_generation: bool
    likeness: bool
    effective_from: int

    def record(self, change_id: str, updated_at: int) -> dict[str, Any]:
        """The catalog.consent.v1 value."""
        return {
            "rights_holder_id": self.rights_holder_id, "work_id": self.work_id, "ai_training": self.ai_training,
            "ai_generation": self.ai_generation, "likeness": self.likeness, "effective_from": self.effective_from,
            "updated_at": updated_at, "change_id": change_id,
        }


# -- field readers ----------------------------------------------------------------------

def _require(item: dict[str, Any], name: str) -> Any:
    if name not in item or item[name] is None:
        raise Invalid(name, "is required")
    return item[name]


def _uuid(item: dict[str, Any], name: str) -> str:
    value = _require(item, name)
    if isinstance(value, str) and UUID_PATTERN.fullmatch(value):
        return value.lower()  # so that duplicates compare equal whatever the case
    raise Invalid(name, "must be a UUID like 0d6f7c1e-2b5a-4f7e-9a11-3c2d4e5f6a7b")


def _id(item: dict[str, Any], name: str, pattern: re.Pattern[str] = ID_PATTERN, required: bool = True) -> str | None:
    value = item.get(name)
    if value is None:
        if required:
            raise Invalid(name, "is required")
        return None
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise Invalid(name, f"must match {pattern.pattern}")
    return value


def _int(item: dict[str, Any], name: str, low: int, high: int, required: bool = True) -> int | None:
    value = item.get(name)
    if value is None:
        if required:
            raise Invalid(name, "is required")
        return None
    if type(value) is not int and (isinstance(value, bool) or not isinstance(value, float) or not value.is_integer()):
        raise Invalid(name, "must be a whole number")
    if not low <= value <= high:
        raise Invalid(name, f"{value} is outside {low}-{high}")
    return int(value)


def _bool(item: dict[str, Any], name: str) -> bool:
    value = _require(item, name)
    if not isinstance(value, bool):
        raise Invalid(name, "must be true or false")
    return value


def _enum(item: dict[str, Any], name: str, symbols: tuple[str, ...], default: str | None = None) -> str:
    value = item.get(name, default)
    if value is None:
        raise Invalid(name, "is required")
    if value not in symbols:
        raise Invalid(name, f"must be one of {', '.join(symbols)}")
    return str(value)


def _time(item: dict[str, Any], name: str, now_ms: int, window: TimeWindow) -> int:
    value = _require(item, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(name, "must be epoch milliseconds (integer)")
    if value > now_ms + window.max_future_ms:
        raise Invalid(name, f"is {value - now_ms} ms in the future (at most {window.max_future_ms} allowed)")
    if value < now_ms - window.max_age_ms:
        raise Invalid(name, f"is older than the {window.max_age_ms // 3_600_000} h this topic keeps")
    return value


def _object(item: Any) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise Invalid("$", "must be a JSON object")
    return item


# -- items ------------------------------------------------------------------------------

def parse_telemetry(item: Any, now_ms: int, window: TimeWindow) -> Telemetry:
    item = _object(item)
    device = item.get("device")
    if device is not None and (not isinstance(device, str) or len(device) > MAX_DEVICE_CHARS):
        raise Invalid("device", f"must be a string of at most {MAX_DEVICE_CHARS} characters")
    heart_rate = _int(item, "heart_rate_bpm", *HEART_RATE_BPM, required=False)
    cadence = _int(item, "cadence_spm", *CADENCE_SPM, required=False)
    mode = _enum(item, "session_mode", SESSION_MODES, "MATCH")
    target = _enum(item, "guide_target", GUIDE_TARGETS, "NONE")
    if mode == "MATCH" and target != "NONE":
        raise Invalid("guide_target", "must be NONE in MATCH sessions")
    music = item.get("music", True)
    if not isinstance(music, bool):
        raise Invalid("music", "must be true or false")
    return Telemetry(
        event_id=_uuid(item, "event_id"),
        session_id=str(_id(item, "session_id")),
        event_time=_time(item, "event_time", now_ms, window),
        heart_rate_bpm=heart_rate,
        cadence_spm=cadence,
        activity=_enum(item, "activity", ACTIVITIES, "UNKNOWN"),
        session_mode=mode,
        guide_target=target,
        device=device,
        music=music,
    )


def parse_play(item: Any, now_ms: int, window: TimeWindow) -> Play:
    item = _object(item)
    kind = _enum(item, "content_kind", CONTENT_KINDS)
    segment_id = _id(item, "segment_id", required=kind == "AI_SEGMENT")
    work_id = _id(item, "work_id", required=kind == "CATALOG_WORK")
    if kind == "AI_SEGMENT" and work_id is not None:
        raise Invalid("work_id", "must be absent for AI_SEGMENT plays")
    if kind == "CATALOG_WORK" and segment_id is not None:
        raise Invalid("segment_id", "must be absent for CATALOG_WORK plays")
    started_at = _time(item, "started_at", now_ms, window)
    ms_played = int(_int(item, "ms_played", 0, MAX_MS_PLAYED) or 0)
    flags = []
    if started_at + ms_played > now_ms + window.max_future_ms:
        flags.append("played_longer_than_elapsed")
    return Play(
        play_id=_uuid(item, "play_id"),
        content_kind=kind,
        segment_id=segment_id,
        work_id=work_id,
        started_at=started_at,
        ms_played=ms_played,
        completed=_bool(item, "completed"),
        fraud_flags=tuple(flags),
    )


@dataclass(frozen=True)
class TokenRequest:
    app_user_id: str
    subscription_tier: str
    territory: str


def parse_token_request(item: Any) -> TokenRequest:
    """What an app backend asks a listener token for (``POST /v1/tokens``)."""
    item = _object(item)
    territory = _require(item, "territory")
    if not isinstance(territory, str) or not TERRITORY_PATTERN.fullmatch(territory):
        raise Invalid("territory", "must be an ISO 3166-1 alpha-2 code like DE")
    return TokenRequest(app_user_id=str(_id(item, "user_id", USER_ID_PATTERN)),
                        subscription_tier=_enum(item, "subscription_tier", TIERS), territory=territory)


def claimed_user_id(item: Any) -> str | None:
    """The ``user_id`` a listener-scoped body names, if any (it must be the token's listener)."""
    if not isinstance(item, dict) or item.get("user_id") is None:
        return None
    value = item["user_id"]
    if not isinstance(value, str) or not USER_ID_PATTERN.fullmatch(value):
        raise Invalid("user_id", f"must match {USER_ID_PATTERN.pattern}")
    return value


def parse_consent(rights_holder_id: str, item: Any, now_ms: int, skew_ms: int) -> Consent:
    if not ID_PATTERN.fullmatch(rights_holder_id):
        raise Invalid("rights_holder_id", f"must match {ID_PATTERN.pattern}")
    item = _object(item)
    effective_from = item.get("effective_from", now_ms)
    if isinstance(effective_from, bool) or not isinstance(effective_from, int) or effective_from < 0:
        raise Invalid("effective_from", "must be epoch milliseconds (integer)")
    if effective_from < now_ms - skew_ms:
        raise Invalid("effective_from", "cannot be in the past: plays already paid under the old consent")
    return Consent(
        rights_holder_id=rights_holder_id,
        work_id=_id(item, "work_id", required=False),
        ai_training=_bool(item, "ai_training"),
        ai_generation=_bool(item, "ai_generation"),
        likeness=_bool(item, "likeness"),
        effective_from=effective_from,
    )

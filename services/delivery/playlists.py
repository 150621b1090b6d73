"""Live playlists: the watermarked segments each listener's session has, in order. Pure.

A segment that arrives after its deadline (the moment playback needed it) is a buffer
underrun: the listener's player ran dry, or would have without its safety margin.

A session position (sequence) can be replanned (soundtrack.schedule's revisions): the segment of
the newest request replaces the one held, and a player swaps it in if it has not started the
old one. A replacement that comes late is no underrun (the old one was there to play). Older
versions arriving after a newer one are dropped. HLS cannot carry that: a live media playlist
must not change a segment it listed (RFC 8216, 6.2.1), so it keeps the first version of each
position (``Entry.listed``), and an HLS player hears the plan as first made (with a discontinuity
where a fragment was encoded to follow the replacement, see ``hls_media_playlist``).
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import m3u8

KEEP_PER_LISTENER = 64
# Segments an HLS playlist lists (the newest): 30-60 s of 2-4 s segments, more than the three target
# durations RFC 8216 6.2.2 asks for; a longer window only makes every reload bigger.
HLS_WINDOW = 16
MAX_LISTENERS = 100_000


@dataclass(frozen=True)
class Entry:
    segment: dict[str, Any]
    arrived_ms: int
    replaces: str | None = None  # the segment id of the version of this position it replaced
    first: dict[str, Any] | None = None  # the first version of this position, when this one replaced it
    first_late: bool = False  # whether that first version came after its deadline

    @property
    def listed(self) -> dict[str, Any]:
        """The first version of this position: what HLS lists (and clients that do not swap)."""
        return self.first or self.segment

    @property
    def late(self) -> bool:
        return self.arrived_ms > int(self.segment["deadline"])

    @property
    def slack_ms(self) -> int:
        """How long before its deadline the segment was available (negative: late)."""
        return int(self.segment["deadline"]) - self.arrived_ms


class Playlists:
    def __init__(self, keep: int = KEEP_PER_LISTENER, max_listeners: int = MAX_LISTENERS) -> None:
        self.keep, self.max_listeners = keep, max_listeners
        self._by_listener: OrderedDict[str, deque[Entry]] = OrderedDict()

    def add(self, segment: dict[str, Any], arrived_ms: int) -> Entry | None:
        """Remember a segment; None if it is a redelivery of one already held."""
        listener = segment["listener_id"]
        entries = self._by_listener.get(listener)
        if entries is None:
            entries = self._by_listener[listener] = deque(maxlen=self.keep)
            while len(self._by_listener) > self.max_listeners:
                self._by_listener.popitem(last=False)
        self._by_listener.move_to_end(listener)
        key = (segment["session_id"], int(segment["sequence"]))
        held = next((i for i, e in enumerate(entries) if _order(e) == key), None)
        if held is not None:  # a redelivery, an older version late, or a replacement
            old = entries[held]
            if old.segment["segment_id"] == segment["segment_id"] or requested_at(old.segment) >= requested_at(segment):
                return None
            entries[held] = entry = Entry(segment, arrived_ms, old.segment["segment_id"], old.listed,
                                          old.first_late if old.first else old.late)
            return entry
        entry = Entry(segment, arrived_ms)
        entries.append(entry)
        if len(entries) > 1 and _order(entries[-2]) > _order(entry):  # out-of-order arrival: keep sessions sorted
            ordered = sorted(entries, key=_order)
            entries.clear()
            entries.extend(ordered)
        return entry

    def forget(self, listener_id: str, until_ms: int | None = None) -> int:
        """Drop what is held for a listener (an erasure): everything, or the segments requested up to
        ``until_ms`` (see ``requested_at``); return how many segments."""
        entries = self._by_listener.pop(listener_id, deque())
        if until_ms is None:
            return len(entries)
        kept = [e for e in entries if requested_at(e.segment) > until_ms]
        # a kept replacement forgets the first version it stands for if that one was requested before
        erased_firsts = [e for e in kept if e.first is not None and requested_at(e.first) <= until_ms]
        kept = [Entry(e.segment, e.arrived_ms) if e in erased_firsts else e for e in kept]
        if kept:
            self._by_listener[listener_id] = deque(kept, maxlen=self.keep)
        return len(entries) - len(kept) + len(erased_firsts)

    def entries(self, listener_id: str) -> list[Entry]:
        """Every segment held for a listener, all sessions."""
        return list(self._by_listener.get(listener_id, ()))

    def session(self, listener_id: str, session_id: str | None = None) -> list[Entry]:
        """The listener's segments of ``session_id`` (default: their newest session), in sequence order."""
        entries = self.entries(listener_id)
        if not entries:
            return []
        wanted = session_id or max(entries, key=lambda e: e.segment["generated_at"]).segment["session_id"]
        return [e for e in entries if e.segment["session_id"] == wanted]

    def __len__(self) -> int:
        return len(self._by_listener)


def requested_at(segment: dict[str, Any]) -> int:
    """When the segment's request was issued: what an erasure is compared with. A request issued
    before the erasure is covered even when its rendering finished after it. Records written
    before v2 carry no request time; their render time stands in."""
    return int(segment.get("requested_at") or segment["generated_at"])


def _order(entry: Entry) -> tuple[str, int]:
    return entry.segment["session_id"], int(entry.segment["sequence"])


def hls_media_playlist(entries: list[Entry], url_of: Callable[[str, str], str], ended: bool = False,
                       window: int = HLS_WINDOW) -> str:
    """An HLS live media playlist (RFC 8216, version 7: fMP4) of the session's AAC renditions;
    ``url_of(sha256, extension)`` names a fragment (``m4s``) or the initialisation segment (``mp4``).

    The newest ``window`` segments are listed, each as first made (``Entry.listed``). A segment
    with no rendition (written before renditions) is left out. ``EXT-X-DISCONTINUITY`` marks exactly
    where the stream breaks: a fragment that starts a new timeline, or one that continues another
    segment than the one listed before it (its predecessor was replanned: the first version is listed, the fragment
    was encoded after the replacement)."""
    listed = [e.listed for e in entries if e.listed.get("rendition")][-window:]
    playlist = m3u8.M3U8()
    # No PLAYLIST-TYPE: delivery keeps a sliding window (KEEP_PER_LISTENER), which an EVENT
    # playlist may not do (it only ever grows, RFC 8216 4.3.3.5).
    playlist.version = 7
    playlist.media_sequence = int(listed[0]["sequence"]) if listed else 0
    longest = 0.0
    before: dict[str, Any] | None = None
    for segment in listed:
        rendition = segment["rendition"]
        duration = rendition["frames"] * 1024 / rendition["sample_rate_hz"]
        longest = max(longest, duration)
        breaks = before is not None and (rendition["discontinuity"]
                                           or segment.get("previous_segment_id") != before["segment_id"])
        playlist.segments.append(m3u8.Segment(
            uri=url_of(rendition["sha256"], "m4s"), duration=round(duration, 5), discontinuity=breaks,
            init_section={"uri": url_of(rendition["init_sha256"], "mp4")}))
        before = segment
    playlist.target_duration = max(1, math.ceil(longest))
    playlist.is_endlist = ended
    return str(playlist.dumps())


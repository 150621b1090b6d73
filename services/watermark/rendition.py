"""The delivery rendition of each watermarked segment: one AAC fMP4 fragment of its session's
gapless stream (``kit.media``), chained to the rendition of the segment it continues.

Why here and not in delivery: this service holds the marked master in memory already, sees each
listener's segments in order (one partition per listener), and publishes one record per segment
id, so the rendition is made once, next to the audio it encodes, and delivery stays a reader.

A fragment's placement and pre-roll come from its *actual* predecessor (``previous_segment_id``),
looked up in memory or, after a restart or rebalance, in the store's rendition record
(``rendition-<segment id>.json``: placement and the marked master's digest). A predecessor with
no rendition (dead-lettered, or from before renditions) starts a new timeline: ``discontinuity``.
Idempotent: the first rendition record written for a segment id wins, and a redelivered segment
gets that one back, so one segment id has one fragment.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from dataclasses import asdict
from typing import Any

import numpy as np
from prometheus_client import Counter, Histogram

from kit import media
from kit.audio import decode_bytes
from kit.store import SegmentStore, StoreError

ENCODE_SECONDS = Histogram("entrain_watermark_rendition_encode_seconds", "Time to encode one segment's AAC fragment.",
                           buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
DISCONTINUITIES = Counter("entrain_watermark_rendition_discontinuities_total",
                          "Renditions that start a new timeline although the segment continues another "
                          "(its predecessor has no rendition).")
TAIL = 2 * media.WINDOW  # predecessor samples kept: more than media.context_samples can ask for
KEEP = 1024  # recent placements and tails in memory (about 32 KiB each)
# Every rendition names the one initialisation segment, written once; it is rewritten this often so
# that a retention rule on the store (objects expire some days after they were written) never
# removes it while renditions still name it (docs/media.md).
INIT_REFRESH_S = 24 * 3600


def record_name(segment_id: str) -> str:
    return f"rendition-{segment_id}.json"


class Renditions:
    def __init__(self, store: SegmentStore, keep: int = KEEP) -> None:
        self.store, self.keep = store, keep
        self._recent: OrderedDict[str, tuple[media.Placement, np.ndarray]] = OrderedDict()
        self._init: tuple[str, str] | None = None
        self._init_written = 0.0

    def make(self, segment: dict[str, Any], master: np.ndarray, master_sha256: str) -> dict[str, Any]:
        """The rendition of a segment whose marked master (frames x 2, as stored) is ``master``."""
        name = record_name(segment["segment_id"])
        held = self.store.get_named(name)
        if held is None:
            after, tail = self._predecessor(segment.get("previous_segment_id"))
            if after is None and segment.get("previous_segment_id"):
                DISCONTINUITIES.inc()
            placement = media.place(len(master), after)
            started = time.perf_counter()
            fragment = media.encode_fragment(master, placement, tail, int(segment["sequence"]) + 1)
            ENCODE_SECONDS.observe(time.perf_counter() - started)
            uri, digest = self.store.put(fragment, "m4s")
            init_uri, init_sha256 = self._init_segment()
            record = {"placement": asdict(placement), "master_sha256": master_sha256, "rendition": {
                "format": "AAC_LC_FMP4", "uri": uri, "sha256": digest, "init_uri": init_uri,
                "init_sha256": init_sha256, "bitrate_bps": media.BITRATE, "sample_rate_hz": media.SAMPLE_RATE,
                "decode_time": placement.decode_time, "frames": placement.frames, "discontinuity": after is None}}
            held = self.store.put_once(name, json.dumps(record, sort_keys=True).encode())
        record = json.loads(held)
        self._remember(segment["segment_id"], media.Placement(**record["placement"]), master)
        return dict(record["rendition"])

    def _predecessor(self, segment_id: str | None) -> tuple[media.Placement | None, np.ndarray | None]:
        if not segment_id:
            return None, None
        if segment_id in self._recent:
            return self._recent[segment_id]
        held = self.store.get_named(record_name(segment_id))
        if held is None:
            return None, None
        record = json.loads(held)
        try:
            master, _ = decode_bytes(self.store.get_content(record["master_sha256"], "wav"))
        except (StoreError, OSError):
            return None, None  # its master is gone (past retention): a new timeline
        return media.Placement(**record["placement"]), master[-TAIL:]

    def _remember(self, segment_id: str, placement: media.Placement, master: np.ndarray) -> None:
        self._recent[segment_id] = (placement, np.array(master[-TAIL:]))
        self._recent.move_to_end(segment_id)
        while len(self._recent) > self.keep:
            self._recent.popitem(last=False)

    def _init_segment(self) -> tuple[str, str]:
        if self._init is None or time.monotonic() - self._init_written > INIT_REFRESH_S:
            self._init = self.store.put(media.init_segment(), "mp4", refresh=self._init is not None)
            self._init_written = time.monotonic()
        return self._init

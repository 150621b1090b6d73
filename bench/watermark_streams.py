"""Excerpts of session streams for `make bench-watermark`: what a listener's stream looks like
when someone cuts a piece of it, as masters and as the delivered AAC rendition.

A session is segments as the scheduler makes them (1 bar up to 110 BPM, 2 above: 2.2-4.3 s),
each continuing the previous one and marked with its own payload from its own start, joined; one
session per tempo band (60-90, 90-120, 120-150, 150-180, 180-200 BPM) and one across all of them.
An excerpt of 5, 10, 20 or 30 s is cut at a random offset and read by the public detector
(``watermark.detector.report``, its windows). It counts as detected when the detector names a
segment of it and nothing that is not in it; ``named`` is the share of segments with at least 2 s
inside an excerpt that the detector names.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from inference.engine import Context, Engine, Job, Params
from kit import media
from kit.audio import encode_wav
from soundtrack.schedule import bars_for
from watermark.detector import report
from watermark.keys import KeyRing
from watermark.scheme import SAMPLE_RATE, embed

BANDS = [(60, 90), (90, 120), (120, 150), (150, 180), (180, 200), (60, 200)]
LENGTHS_S = (5, 10, 20, 30)


@dataclass
class Session:
    band: tuple[int, int]
    audio: np.ndarray  # the marked masters joined
    spans: list[tuple[int, int, int]]  # (start, end, payload) per segment, in samples


def sessions(ring: KeyRing, seconds: float, seed: int = 5) -> list[Session]:
    engine, rng, out = Engine(), np.random.default_rng(seed), []
    for band in BANDS:
        context: Context | None = None
        parts, spans, at = [], [], 0
        while at < seconds * SAMPLE_RATE:
            tempo = float(rng.uniform(*band))
            params = Params(tempo, float(rng.uniform(0.1, 0.9)), "MAJOR" if rng.random() < 0.5 else "MINOR",
                            int(rng.integers(12)), bars_for(tempo))
            (segment,) = engine.generate_batch([Job(params, seed=int(rng.integers(1 << 30)), context=context)])
            context = segment.context
            payload = int(rng.integers(0, 1 << 32))
            marked = embed(segment.rendered.audio, ring.active, payload)
            parts.append(marked)
            spans.append((at, at + len(marked), payload))
            at += len(marked)
        out.append(Session(band, np.concatenate(parts), spans))
    return out


def delivered(session: Session) -> Session:
    """The same session as a player receives it: each segment's AAC fragment chained to its
    predecessor (kit.media, as the watermark service makes them), decoded in order."""
    fragments, after, tail = [], None, None
    for number, (start, end, _) in enumerate(session.spans, 1):
        master = session.audio[start:end]
        placement = media.place(len(master), after)
        fragments.append(media.encode_fragment(master, placement, tail, number))
        after, tail = placement, master
    audio, _ = media.decode(media.init_segment(), fragments)
    return Session(session.band, audio[media.PRIMING:media.PRIMING + len(session.audio)], session.spans)


def excerpts(streams: list[Session], ring: KeyRing, count: int, seed: int = 9) -> dict[str, Any]:
    """``count`` excerpts, lengths and sessions taken in turn; figures per length and per band."""
    rng = np.random.default_rng(seed)
    tally: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    wrong = 0
    for i in range(count):
        session, seconds = streams[i % len(streams)], LENGTHS_S[(i // len(streams)) % len(LENGTHS_S)]
        size = int(seconds * SAMPLE_RATE)
        lo = int(rng.integers(0, len(session.audio) - size))
        hi = lo + size
        found = report(encode_wav(session.audio[lo:hi], SAMPLE_RATE), ring, None)
        named = {int(h["payload_hex"], 16) for h in found["segments"]}
        present = {p for a, b, p in session.spans if min(b, hi) > max(a, lo)}
        inside = {p for a, b, p in session.spans if min(b, hi) - max(a, lo) >= 2 * SAMPLE_RATE}
        wrong += len(named - present)
        for group in (f"{seconds}s", f"{session.band[0]}-{session.band[1]}bpm", "all"):
            tally[group]["detected"].append(float(bool(named & present) and named <= present))
            tally[group]["named"].append(len(named & inside) / max(1, len(inside)))
    figures = {group: {k: round(float(np.mean(v)), 4) for k, v in values.items()} | {"n": len(values["named"])}
               for group, values in tally.items()}
    return {"excerpts": count, "wrong_payloads": wrong, **figures}

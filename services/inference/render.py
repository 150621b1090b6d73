"""Render a segment to audio with a General MIDI SoundFont (TimGM6mb, shipped in pretty-midi).

Tempo is exact: every event's sample position is computed from its position in
sixteenths on the segment's beat grid (``kit.tempo``: a constant tempo, or a glide from the
previous segment's tempo that moves every beat), rounded from the exact running sum, so there
is no drift. The segment is exactly ``bars`` bars long. Sound still ringing at the end (releases,
reverb) is returned as a ``tail`` that the next segment of the same session mixes
into its start, so joins are continuous. Loudness is normalised to TARGET_LUFS
(ITU-R BS.1770 via pyloudnorm) and the peak kept below PEAK_CEILING_DBFS.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyloudnorm
import tinysoundfont

from inference.music import Note, scale, triad
from kit.tempo import beat_edges, step_sample

SAMPLE_RATE = 44_100
TARGET_LUFS = -16.0
PEAK_CEILING_DBFS = -1.0
TAIL_SECONDS = 1.5
DRUMS = 9
KICK, SNARE, CLOSED_HAT, SHAKER = 36, 38, 42, 70


@lru_cache(maxsize=1)
def soundfont_path() -> str:
    import pretty_midi

    return str(Path(pretty_midi.__file__).with_name("TimGM6mb.sf2"))


@dataclass(frozen=True)
class Event:
    step: float  # position in sixteenths
    channel: int
    key: int
    velocity: int  # 0 = note off


@dataclass(frozen=True)
class Rendered:
    audio: np.ndarray  # float32, (samples, 2), exactly the segment's length
    tail: np.ndarray  # float32, (samples, 2), what rings on past the end
    gain: float


def tonic_reference(key_tonic: int) -> int:
    return 60 + key_tonic if key_tonic <= 7 else 48 + key_tonic


def arrange(notes: list[Note], degrees: list[int], mode: str, key_tonic: int, energy: float, bars: int,
            rng: np.random.Generator) -> list[Event]:
    """Melody, harmony, bass and drums as note events, their density and loudness set by energy."""
    root = tonic_reference(key_tonic)
    events: list[Event] = []
    melody_velocity = int(70 + 40 * energy)

    def note(step: float, length: float, channel: int, key: int, velocity: int) -> None:
        velocity = int(np.clip(velocity + rng.integers(-4, 5), 1, 127))
        events.append(Event(step, channel, key, velocity))
        events.append(Event(step + length, channel, key, 0))

    for n in notes:
        note(n.start, n.length * 0.95, 0, root + n.rel, melody_velocity)
    for half, degree in enumerate(degrees):
        start = half * 8
        chord = [root - 12 + x for x in triad(mode, degree)]
        bass = root - 24 + scale(mode)[degree]
        if energy < 0.34:  # sustained pad and a bass note per half bar
            for k in chord:
                note(start, 8, 1, k, int(45 + 20 * energy))
            note(start, 8, 2, bass, 70)
        else:  # arpeggiated eighths, bass on beats (eighths when intense)
            for i in range(4):
                note(start + 2 * i, 2, 1, chord[(0, 1, 2, 1)[i]] + (12 if i == 2 else 0), int(45 + 35 * energy))
            step = 2 if energy >= 0.67 else 4
            for i in range(0, 8, step):
                note(start + i, step * 0.9, 2, bass + (12 if energy >= 0.67 and i % 4 else 0), int(75 + 30 * energy))
    for beat in range(bars * 4):  # the beat is always audible; the kit grows with energy
        step = beat * 4
        note(step, 1, DRUMS, KICK, int(88 + 30 * energy) if beat % 2 == 0 else int(78 + 30 * energy))
        if energy >= 0.34:
            note(step + 2, 1, DRUMS, CLOSED_HAT, int(40 + 40 * energy))
        else:
            note(step + 2, 1, DRUMS, SHAKER, 40)
        if energy >= 0.5 and beat % 2 == 1:
            note(step, 1, DRUMS, SNARE, int(60 + 45 * energy))
        if energy >= 0.8:
            note(step + 1, 0.5, DRUMS, CLOSED_HAT, 45)
            note(step + 3, 0.5, DRUMS, CLOSED_HAT, 45)
    return events


PROGRAMS = {"low": (73, 48, 32), "mid": (0, 0, 33), "high": (81, 4, 38)}  # melody, harmony, bass


_synths = threading.local()
FLUSH_SAMPLES = 4_410  # 100 ms, far longer than TinySoundFont's quick release


def _synth() -> tuple[tinysoundfont.Synth, int]:
    """This thread's synthesizer with the SoundFont loaded once (parsing it took ~11 ms a segment),
    silenced: ``sounds_off`` ends every voice (rendered away), and every segment selects its own programs,
    so a segment renders the same bytes as on a fresh synthesizer (tested)."""
    cached = getattr(_synths, "synth", None)
    if cached is None:
        synth = tinysoundfont.Synth(samplerate=SAMPLE_RATE)
        cached = _synths.synth = (synth, synth.sfload(soundfont_path()))
    cached[0].sounds_off()  # a quick release, not a cut: render it away so no voice outlives the segment
    cached[0].generate(FLUSH_SAMPLES)
    return cached


def reset_synthesizer() -> None:
    """Forget this thread's synthesizer: the next segment loads the SoundFont again (tests, benchmarks)."""
    _synths.__dict__.clear()


def synthesize(events: list[Event], bpm: float, bars: int, energy: float,
               tempo_from: float | None = None) -> tuple[np.ndarray, int]:
    """Stereo float32 of the segment plus TAIL_SECONDS, and the segment's length in samples; with
    ``tempo_from`` the beats glide from that tempo to ``bpm`` (``kit.tempo``)."""
    synth, sfid = _synth()
    melody, harmony, bass = PROGRAMS["low" if energy < 0.34 else "mid" if energy < 0.67 else "high"]
    for channel, program in ((0, melody), (1, harmony), (2, bass)):
        synth.program_select(channel, sfid, 0, program)
    synth.program_select(DRUMS, sfid, 128, 0, True)
    edges = beat_edges(bpm, bars, tempo_from, SAMPLE_RATE)
    length = round(edges[-1])
    total = length + int(TAIL_SECONDS * SAMPLE_RATE)
    out = np.zeros(total * 2, dtype=np.float32)
    cursor = 0
    # Note-offs before note-ons at the same instant, so a repeated key re-attacks.
    for event in sorted(events, key=lambda e: (e.step, e.velocity > 0)):
        at = min(total, step_sample(edges, event.step))
        if at > cursor:
            chunk = synth.generate(at - cursor)
            out[cursor * 2: at * 2] = np.frombuffer(chunk, dtype=np.float32)
            cursor = at
        if event.velocity:
            synth.noteon(event.channel, event.key, event.velocity)
        else:
            synth.noteoff(event.channel, event.key)
    synth.notes_off()
    if total > cursor:
        out[cursor * 2:] = np.frombuffer(synth.generate(total - cursor), dtype=np.float32)
    return out.reshape(-1, 2), length


_METER = pyloudnorm.Meter(SAMPLE_RATE)


def loudness(audio: np.ndarray) -> float:
    return float(_METER.integrated_loudness(audio.astype(np.float64)))


def finish(raw: np.ndarray, length: int, previous_tail: np.ndarray | None) -> Rendered:
    """Normalise loudness, cap the peak, add the previous segment's tail, split off this one's."""
    measured = loudness(raw[:length])
    gain = 10 ** ((TARGET_LUFS - measured) / 20) if np.isfinite(measured) else 1.0
    audio = raw * gain
    if previous_tail is not None:
        n = min(len(previous_tail), length)
        audio[:n] += previous_tail[:n]
    ceiling = 10 ** (PEAK_CEILING_DBFS / 20)
    peak = float(np.max(np.abs(audio[:length]))) if length else 0.0
    if peak > ceiling:  # rare: lower this segment only as much as needed
        audio *= ceiling / peak
        gain *= ceiling / peak
    return Rendered(audio=audio[:length].astype(np.float32), tail=audio[length:].astype(np.float32), gain=gain)


"""Render a segment to audio with a General MIDI SoundFont (``soundfont_path``).

Tempo is exact: every event's sample position is computed from its position in
sixteenths on the segment's beat grid (``kit.tempo``: a constant tempo, or a glide from the
previous segment's tempo that moves every beat), rounded from the exact running sum, so there
is no drift. The segment is exactly ``bars`` bars long. Sound still ringing at the end (releases,
reverb) is returned as a ``tail`` that the next segment of the same session mixes
into its start, so joins are continuous.

The arrangement and the level follow energy, so a cool-down is quieter and sparser than a sprint:
below SLEEP a pad, the melody and a soft bass note on every beat (no percussion); up to REST a
shaker after beats 2 and 4 joins; from REST a kick on beats 1 and 3, hats on the off-beats and an
arpeggio instead of the pad; from MOVING a snare on 2 and 4 with a hat before the next beat; from
DRIVING four on the floor, a bass in eighths and one more sixteenth a bar; from 0.8 sixteenth hats.
The onsets a beat grow with every step (``make bench-music`` measures it from the audio). While the
energy rises from one segment to the next, each segment builds up into the next (a snare roll on its
last beat) and a layer entering is marked by a crash; fills and a crash also mark section ends. The bass
marks every beat at every energy, so the beat stays audible (and
measurable) without a kick. Loudness (ITU-R BS.1770 via pyloudnorm) is normalised to
``target_lufs(energy)``, QUIET_LUFS at energy 0 to LOUD_LUFS at 1, gliding within a segment from
the level its predecessor ended at (neighbours of the same energy join level); the peak stays
below PEAK_CEILING_DBFS.
"""

from __future__ import annotations

import os
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
QUIET_LUFS, LOUD_LUFS = -27.0, -16.0  # energy 0 and 1 (louder than -16 would meet the peak ceiling)
SLEEP, REST, MOVING, DRIVING = 0.15, 0.34, 0.5, 0.67  # energy thresholds of the arrangement
PEAK_CEILING_DBFS = -1.0
TAIL_SECONDS = 1.5
DRUMS = 9
KICK, SNARE, CLOSED_HAT, SHAKER = 36, 38, 42, 70
LOW_TOM, MID_TOM, HIGH_TOM, CRASH = 45, 47, 50, 49


def fallback_soundfont() -> str:
    """TimGM6mb (6 MB, shipped in pretty-midi): always there, and the default (``make bench-soundfont``:
    FluidR3 renders as fast and brighter, but the arrangement's onsets no longer rise with energy in it)."""
    import pretty_midi

    return str(Path(pretty_midi.__file__).with_name("TimGM6mb.sf2"))


@lru_cache(maxsize=1)
def soundfont_path() -> str:
    """``ENTRAIN_SOUNDFONT`` (a General MIDI .sf2 or .sf3), else TimGM6mb."""
    chosen = os.environ.get("ENTRAIN_SOUNDFONT")
    if chosen:
        if not Path(chosen).is_file():
            raise FileNotFoundError(f"ENTRAIN_SOUNDFONT={chosen}: no such file")
        return chosen
    return fallback_soundfont()


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
    lufs: float  # the level it ends at (target_lufs of its energy): where the next one starts


def target_lufs(energy: float) -> float:
    return QUIET_LUFS + (LOUD_LUFS - QUIET_LUFS) * energy


def tonic_reference(key_tonic: int) -> int:
    return 60 + key_tonic if key_tonic <= 7 else 48 + key_tonic


def energy_of(lufs: float) -> float:
    """The energy a segment ending at ``lufs`` was rendered at (``target_lufs`` inverted)."""
    return round((lufs - QUIET_LUFS) / (LOUD_LUFS - QUIET_LUFS), 6)


def tier(energy: float) -> int:
    """The arrangement's layer set: how many of its thresholds the energy has reached."""
    return sum(energy >= t for t in (SLEEP, REST, MOVING, DRIVING, 0.8))


def arrange(notes: list[Note], degrees: list[int], mode: str, key_tonic: int, energy: float, bars: int,
            rng: np.random.Generator, fills: frozenset[int] = frozenset(),
            downbeats: frozenset[int] = frozenset(), previous: float | None = None) -> list[Event]:
    """Melody, harmony, bass and drums as note events, their layers, density and velocity set by energy.
    ``fills``: bars (of the segment) that end a section: their last beat is a drum fill into the next;
    ``downbeats``: bars that open a section after one: a crash on their first beat (with drums playing).
    ``previous``: the energy the session's previous segment had. Rising from it (with drums playing), the
    segment builds up: its last beat is a snare roll in sixteenths, louder hit by hit, into the next; where
    the rise brings in a layer (``tier``), a crash marks its first beat."""
    root = tonic_reference(key_tonic)
    rising = previous is not None and energy > previous + 1e-6 and energy >= REST
    if rising and previous is not None and tier(energy) > tier(previous):
        downbeats = downbeats | {0}
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
        bass = 36 + (key_tonic + scale(mode)[degree]) % 12  # C2-B2: a bass's register, below 160 Hz
        if energy < REST:  # sustained pad, held (not struck again) while the chord stays
            if half == 0 or degrees[half - 1] != degree:
                held = next((j for j in range(half + 1, len(degrees)) if degrees[j] != degree), len(degrees)) - half
                for k in chord:
                    note(start, 8 * held, 1, k, int(45 + 20 * energy))
        else:  # arpeggiated eighths
            for i in range(4):
                note(start + 2 * i, 2, 1, chord[(0, 1, 2, 1)[i]] + (12 if i == 2 else 0), int(45 + 35 * energy))
        step = 2 if energy >= DRIVING else 4  # the bass on every beat (eighths when driving)
        for i in range(0, 8, step):
            velocity = int(75 + 30 * energy) if energy >= REST else int(62 + 30 * energy)
            note(start + i, step * 0.9, 2, bass + (12 if energy >= DRIVING and i % 4 else 0), velocity)
    for beat in range(bars * 4):  # the kit grows with energy, onsets a beat with it: none below SLEEP
        step = beat * 4
        if energy >= REST and beat % 4 == 0 and beat // 4 in downbeats:
            note(step, 4, DRUMS, CRASH, int(60 + 40 * energy))
        if energy >= REST and beat % 4 == 3 and beat // 4 in fills:  # toms down to the snare, rising
            for i, drum in enumerate((HIGH_TOM, MID_TOM, LOW_TOM, SNARE) if energy >= MOVING else (MID_TOM, LOW_TOM)):
                spacing = 1 if energy >= MOVING else 2
                note(step + spacing * i, spacing * 0.9, DRUMS, drum, int(55 + 35 * energy + 8 * i))
            continue
        if rising and beat == bars * 4 - 1:  # the build-up's roll
            for i in range(4):
                note(step + i, 0.9, DRUMS, SNARE, int(50 + 30 * energy + 12 * i))
            continue
        if energy >= DRIVING or (energy >= REST and beat % 2 == 0):
            note(step, 1, DRUMS, KICK, int(88 + 30 * energy) if beat % 2 == 0 else int(78 + 30 * energy))
        if energy >= REST:
            note(step + 2, 1, DRUMS, CLOSED_HAT, int(40 + 40 * energy))
        elif energy >= SLEEP and beat % 2 == 1:
            note(step + 2, 1, DRUMS, SHAKER, int(25 + 40 * energy))
        if energy >= MOVING and beat % 2 == 1:
            note(step, 1, DRUMS, SNARE, int(60 + 45 * energy))
            note(step + 3, 0.5, DRUMS, CLOSED_HAT, int(30 + 25 * energy))
        if energy >= DRIVING and beat % 4 == 3:
            note(step + 1, 0.5, DRUMS, CLOSED_HAT, int(30 + 25 * energy))
        if energy >= 0.8:
            note(step + 1, 0.5, DRUMS, CLOSED_HAT, 45)
            note(step + 3, 0.5, DRUMS, CLOSED_HAT, 45)
    return events


# melody, harmony, bass: darker at rest, brighter with energy (the spectral centroid rises with it,
# ``make bench-music``); a fingered bass from rest to moving, whose attack carries the beat without drums
PROGRAMS = {"low": (0, 48, 33), "mid": (11, 4, 33), "high": (81, 5, 38)}


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
    melody, harmony, bass = PROGRAMS["low" if energy < REST else "mid" if energy < DRIVING else "high"]
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


def finish(raw: np.ndarray, length: int, previous_tail: np.ndarray | None, energy: float,
           previous_lufs: float | None = None) -> Rendered:
    """Normalise loudness to the energy's level (gliding from ``previous_lufs``, the level the previous
    segment ended at, over the segment), cap the peak, add the previous segment's tail, split off this one's."""
    level = target_lufs(energy)
    measured = loudness(raw[:length])
    gain = 10 ** ((level - measured) / 20) if np.isfinite(measured) else 1.0
    audio = raw * gain
    if previous_lufs is not None and previous_lufs != level and length:
        left = np.clip(1 - np.arange(len(raw)) / length, 0, 1)  # 1 at the start, 0 from the end on
        audio *= (10 ** ((previous_lufs - level) * left / 20)).astype(np.float32)[:, None]
    if previous_tail is not None:
        n = min(len(previous_tail), length)
        audio[:n] += previous_tail[:n]
    ceiling = 10 ** (PEAK_CEILING_DBFS / 20)
    peak = float(np.max(np.abs(audio[:length]))) if length else 0.0
    if peak > ceiling:  # rare: lower this segment only as much as needed
        audio *= ceiling / peak
        gain *= ceiling / peak
    return Rendered(audio=audio[:length].astype(np.float32), tail=audio[length:].astype(np.float32), gain=gain,
                    lufs=level)


"""Symbolic music: melodies as tokens relative to the key, and the harmony around them.

Token grammar (one melody): BOS MODE ENERGY (BAR | PITCH DUR | REST DUR)*
PITCH is the semitone distance from the tonic (-12..+24), DUR a length in
sixteenth notes (1..16). Everything is relative to the tonic, so the model learns
melody independent of key, and the key is applied when rendering.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

PAD, BOS, BAR, MAJOR, MINOR = 0, 1, 2, 3, 4
ENERGY_TOKENS = (5, 6, 7)
REST = 8
PITCH_LOW, PITCH_HIGH = -12, 24
PITCH0 = 9
DUR0 = PITCH0 + (PITCH_HIGH - PITCH_LOW + 1)  # 46
MAX_DUR = 16
VOCAB = DUR0 + MAX_DUR  # 62
STEPS_PER_BAR = 16  # 4/4 in sixteenths

MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)
MINOR_SCALE = (0, 2, 3, 5, 7, 8, 10)


def pitch_token(rel: int) -> int:
    return PITCH0 + max(PITCH_LOW, min(PITCH_HIGH, rel)) - PITCH_LOW


def token_pitch(token: int) -> int:
    return token - PITCH0 + PITCH_LOW


def dur_token(steps: int) -> int:
    return DUR0 + max(1, min(MAX_DUR, steps)) - 1


def token_dur(token: int) -> int:
    return token - DUR0 + 1


def is_pitch(token: int) -> bool:
    return PITCH0 <= token < DUR0


def is_dur(token: int) -> bool:
    return DUR0 <= token < VOCAB


def scale(mode: str) -> tuple[int, ...]:
    return MAJOR_SCALE if mode == "MAJOR" else MINOR_SCALE


def energy_token(energy: float) -> int:
    return ENERGY_TOKENS[0 if energy < 0.34 else 1 if energy < 0.67 else 2]


@dataclass(frozen=True)
class Note:
    start: int  # sixteenths from the segment's first bar line
    length: int  # sixteenths
    rel: int  # semitones from the tonic (None-free: rests are not notes)


def tokens_to_notes(tokens: list[int]) -> list[Note]:
    """Notes of a token stream (prefix tokens and BARs ignored); positions from 0."""
    notes, position, pending = [], 0, None
    for token in tokens:
        if is_pitch(token) or token == REST:
            pending = token
        elif is_dur(token) and pending is not None:
            length = token_dur(token)
            if pending != REST:
                notes.append(Note(position, length, token_pitch(pending)))
            position += length
            pending = None
    return notes


def notes_to_tokens(notes: list[tuple[int, int, int | None]]) -> list[int]:
    """(start, length, rel or None for rest) in order -> tokens with BAR at bar lines."""
    tokens: list[int] = []
    position = 0
    for start, length, rel in notes:
        if start > position:  # a gap is a rest
            tokens += _event(REST, start - position, position)
            position = start
        tokens += _event(REST if rel is None else pitch_token(rel), length, position)
        position += length
    return tokens


def _event(symbol: int, length: int, position: int) -> list[int]:
    out = [BAR] if position % STEPS_PER_BAR == 0 else []
    while length > MAX_DUR:  # split over-long events
        out += [symbol, dur_token(MAX_DUR)]
        length -= MAX_DUR
    return [*out, symbol, dur_token(length)]


# -- harmony: one diatonic triad per half bar, chosen to contain the melody --------------

TRIADS = {"MAJOR": (0, 3, 4, 5, 1), "MINOR": (0, 3, 4, 5, 6)}  # scale-degree roots: I IV V vi ii / i iv v VI VII


def triad(mode: str, degree: int) -> tuple[int, int, int]:
    """Semitones from the tonic of the diatonic triad on a scale degree (0-based)."""
    s = scale(mode)
    return tuple(s[(degree + k) % 7] + 12 * ((degree + k) // 7) for k in (0, 2, 4))  # type: ignore[return-value]


def sounding_at(notes: Sequence[Note], at: int) -> int | None:
    """The index of the note a half bar starting at ``at`` is harmonised under: the melody note
    sounding there, or else the first starting in that half bar (None: a silent half bar)."""
    sounding = [i for i, n in enumerate(notes) if n.start <= at < n.start + n.length] or \
               [i for i, n in enumerate(notes) if at <= n.start < at + 8]
    return sounding[0] if sounding else None


def melody_pc(notes: Sequence[Note], at: int) -> int | None:
    """The pitch class of ``sounding_at``."""
    i = sounding_at(notes, at)
    return None if i is None else notes[i].rel % 12


def harmonize(notes: list[Note], mode: str, bars: int, previous_degree: int = 0,
              cadences: dict[int, tuple[int, ...]] | None = None) -> list[int]:
    """A chord root degree per half bar: a triad containing the melody note sounding at
    the half bar's start, preferring the tonic, subdominant and dominant; a half bar in
    ``cadences`` (half bar -> the degrees it may take: a phrase's end, ``inference.form``)
    takes one of those when the melody allows."""
    degrees = []
    for half in range(bars * 2):
        pc = melody_pc(notes, half * 8)
        choices = [d for d in TRIADS[mode] if pc is None or pc in {x % 12 for x in triad(mode, d)}]
        if cadences and half in cadences:
            choices = [d for d in choices if d in cadences[half]] or choices
        if not choices:
            choices = [previous_degree]
        # Prefer moving (not repeating a chord for long) but stay with the functional order.
        degree = choices[0] if choices[0] != previous_degree or len(choices) == 1 else choices[1]
        degrees.append(degree)
        previous_degree = degree
    return degrees

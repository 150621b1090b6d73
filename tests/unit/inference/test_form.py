"""A session is one composition: phrases end on cadences, the first A's melody comes back in A'
and in the returning A, measured on the engine's own output across segments."""

from __future__ import annotations

import numpy as np

from inference import form
from inference.engine import Context, Engine, Params
from inference.music import STEPS_PER_BAR, Note, tokens_to_notes

ENGINE = Engine()


def test_the_form_cycle_and_its_cadences() -> None:
    assert [form.section(b)[1] for b in (0, 8, 16, 24, 32)] == ["A", "A'", "B", "A", "A"]
    assert [form.theme_bar(b) for b in (0, 7, 8, 11, 12, 16, 24, 31, 32)] == [None, None, 0, 3, None, None, 0, 7, None]
    assert [b for b in range(16) if form.cadence(b) is not None] == [3, 7, 11, 15]
    assert form.cadence(7) == (form.TONIC,) and form.cadence(3) == (form.DOMINANT,)


def test_a_repeated_bar_never_overlaps_the_sampled_bar_after_it() -> None:
    theme = form.Theme("MAJOR", 6, ((0, 16, 0), (16, 16, 2), (32, 16, 4), (48, 32, 5)))  # the last crosses a bar
    sampled = [Note(0, 16, 7), Note(16, 16, 9)]
    notes, _, repeated = form.apply_form(sampled, 11, 2, theme, "MAJOR", 6)  # bar 11 repeats, bar 12 is new
    # bar 11 ends a phrase: the theme's F (5) under a half cadence lands on the dominant's G (7)
    assert repeated and notes == [Note(0, 16, 7), Note(16, 16, 9)]
    other, _, again = form.apply_form(sampled, 11, 2, theme, "MINOR", 6)  # another mode: nothing repeats
    assert not again and other == sampled  # and G is the minor dominant's root: nothing lands


def test_a_phrase_end_lands_on_its_cadence_chord_and_nothing_else_moves() -> None:
    melody = [Note(0, 4, 0), Note(4, 4, 2), Note(8, 8, 5), Note(16, 4, 4), Note(20, 4, 2), Note(24, 8, 1)]
    # the note sounding at the second bar's half (start 24): C# under a cadence
    assert form.land_cadences(melody, 6, 2, "MAJOR") == [*melody[:5], Note(24, 8, 0)]  # bar 7 ends a section: I
    assert form.land_cadences(melody, 2, 2, "MAJOR") == [*melody[:5], Note(24, 8, 2)]  # bar 3 a phrase: V (G B D)
    assert form.land_cadences(melody, 0, 2, "MAJOR") == melody  # bars 0-1 end nothing
    fits = [*melody[:5], Note(24, 8, 7)]  # G is in both chords: stays
    assert form.land_cadences(fits, 6, 2, "MAJOR") == fits == form.land_cadences(fits, 2, 2, "MAJOR")


def bars_of(segments: list[tuple[int, list[Note]]]) -> dict[int, list[tuple[int, int, int]]]:
    out: dict[int, list[tuple[int, int, int]]] = {}
    for bar0, notes in segments:
        for n in notes:
            bar = bar0 + n.start // STEPS_PER_BAR
            out.setdefault(bar, []).append((n.start % STEPS_PER_BAR, n.length, n.rel))
    return out


def test_a_session_repeats_its_theme_where_the_form_says_and_cadences_at_phrase_ends() -> None:
    context: Context | None = None
    segments, degrees = [], {}
    for i in range(18):  # 36 bars of 2-bar segments at one energy
        segment = ENGINE.generate(Params(140, 0.6, "MAJOR", 2, 2), seed=50 + i, context=context)
        bar0 = context.bar if context is not None else 0
        assert segment.context.bar == bar0 + 2
        segments.append((bar0, tokens_to_notes(segment.tokens)))
        for k in range(2):
            degrees[bar0 + k] = segment.degrees[2 * k + 1]
        context = Context.from_bytes(segment.context.to_bytes())  # as the generation log keeps it
    bars = bars_of(segments)
    for bar in range(8, 12):  # A': the theme's first phrase
        assert bars[bar] == bars[bar - 8], bar
    for bar in range(24, 32):  # A returns whole
        assert bars[bar] == bars[bar - 24], bar
    assert bars[12] != bars[4] and bars[16] != bars[0] and bars[32] != bars[0]  # A' varies, B is new, so is a new cycle
    ends = [b for b in range(36) if form.cadence(b) is not None]
    on_cadence = sum(degrees[b] in (form.cadence(b) or ()) for b in ends)
    assert on_cadence == len(ends), (on_cadence, len(ends))  # the melody lands on every cadence
    others = [degrees[b] for b in range(36) if form.cadence(b) is None]
    assert len(set(others)) >= 3  # no forced cadence elsewhere: the harmony moves


def test_a_replay_of_a_session_renders_the_same_audio() -> None:
    def run() -> list[np.ndarray]:
        context, out = None, []
        for i in range(10):
            segment = ENGINE.generate(Params(120, 0.5, "MINOR", 4, 2), seed=i, context=context)
            out.append(segment.rendered.audio)
            context = Context.from_bytes(segment.context.to_bytes())
        return out
    assert all(np.array_equal(a, b) for a, b in zip(run(), run(), strict=True))

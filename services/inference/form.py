"""A session's musical form: phrases, sections that repeat and vary, cadences at phrase ends.

A session is one composition, cut into segments: bar ``b`` of the session (counted across its
segments, carried in the generation context) sits in a phrase of PHRASE_BARS bars and a section of
SECTION_BARS bars, and the sections follow FORM, A A' B A, again and again (a 32-bar cycle, about
50-80 s of music at 96-165 BPM):

  A   (first)  new melody, kept as the cycle's theme
  A'           the theme's first phrase again, then a new second phrase (a variation)
  B            new melody (the contrast)
  A   (return) the theme again, whole

A phrase ends on a cadence: a half cadence (the dominant) inside a section, an authentic one
(the tonic) at a section's end; no other bar is forced to cadence, so a segment boundary is no
longer heard as an ending. A theme is repeated only at the energy it was written at (its melody's
density is the energy's); at another energy the bar is new. Pure functions: the engine applies
them, the context carries the bar and the theme, so a replay renders the same.
"""

from __future__ import annotations

from dataclasses import dataclass

from inference.music import STEPS_PER_BAR, Note, sounding_at, triad

PHRASE_BARS = 4
SECTION_BARS = 8
FORM = ("A", "A'", "B", "A")
CYCLE_BARS = SECTION_BARS * len(FORM)
TONIC, DOMINANT = 0, 4  # scale degrees (0-based)


def section(bar: int) -> tuple[int, str, int]:
    """(index in FORM, its label, bar within the section) of a session bar."""
    index = (bar % CYCLE_BARS) // SECTION_BARS
    return index, FORM[index], bar % SECTION_BARS


def records_theme(bar: int) -> bool:
    """The bar belongs to the cycle's first A: its melody becomes the theme."""
    return section(bar)[0] == 0


def theme_bar(bar: int) -> int | None:
    """The theme bar this bar repeats, or None when it is new."""
    index, _, within = section(bar)
    if index == 1 and within < PHRASE_BARS:  # A': the theme's first phrase, then a new one
        return within
    if index == 3:  # A returns whole
        return within
    return None


def ends_section(bar: int) -> bool:
    return (bar + 1) % SECTION_BARS == 0


def cadence(bar: int) -> tuple[int, ...] | None:
    """The chord degrees the bar's last half bar may take (a cadence), or None (no cadence there)."""
    if ends_section(bar):
        return (TONIC,)
    if (bar + 1) % PHRASE_BARS == 0:
        return (DOMINANT,)
    return None


@dataclass(frozen=True)
class Theme:
    """The melody of a cycle's first A, key-relative: repeated only in its own mode and energy band."""

    mode: str
    energy: int  # the energy token (inference.music.energy_token) it was written at
    notes: tuple[tuple[int, int, int], ...] = ()  # (start from the section's first bar line, length, rel)


def apply_form(notes: list[Note], bar0: int, bars: int, theme: Theme | None, mode: str,
               energy: int) -> tuple[list[Note], Theme | None, bool]:
    """A segment's melody with the form applied, the theme after it, and whether any bar was
    taken from the theme. ``notes``: the melody sampled for the segment's ``bars`` bars, which
    start at session bar ``bar0``. A note is cut at the end of its bar where the next bar's melody
    comes from elsewhere (the theme or the sample), so the two never overlap."""
    usable = theme is not None and theme.mode == mode and theme.energy == energy
    sources = [theme_bar(bar0 + k) if usable else None for k in range(bars)]
    out: list[Note] = []
    for k, source in enumerate(sources):
        own = [n for n in notes if k * STEPS_PER_BAR <= n.start < (k + 1) * STEPS_PER_BAR]
        if source is not None and theme is not None:
            offset = (k - source) * STEPS_PER_BAR
            own = [Note(start + offset, length, rel) for start, length, rel in theme.notes
                   if source * STEPS_PER_BAR <= start < (source + 1) * STEPS_PER_BAR]
        until = bars * STEPS_PER_BAR
        for j in range(k + 1, bars):  # the run of bars from the same source ends here
            if (sources[j] is None) != (source is None) or (source is not None and sources[j] != source + j - k):
                until = j * STEPS_PER_BAR
                break
        out.extend(Note(n.start, min(n.length, until - n.start), n.rel) for n in own)
    out = land_cadences(out, bar0, bars, mode)
    for k in range(bars):
        bar = bar0 + k
        if not records_theme(bar):
            continue
        if section(bar)[2] == 0 or theme is None:
            theme = Theme(mode, energy)
        within = section(bar)[2] * STEPS_PER_BAR - k * STEPS_PER_BAR
        theme = Theme(theme.mode, theme.energy, theme.notes + tuple(
            (n.start + within, n.length, n.rel) for n in out if k * STEPS_PER_BAR <= n.start < (k + 1) * STEPS_PER_BAR))
    return out, theme, any(source is not None for source in sources)


def land_cadences(notes: list[Note], bar0: int, bars: int, mode: str) -> list[Note]:
    """A phrase's melody lands on its cadence: where a bar ends a phrase, the note sounding at its last
    half bar (the half bar ``harmonize`` gives the cadence chord) moves to the nearest tone of the
    cadence's chord when no chord the cadence allows holds it (a step of one or two semitones; a
    triad's tones are at most four apart). Otherwise the sampled melody often denies the cadence."""
    out = list(notes)
    for k in range(bars):
        allowed = cadence(bar0 + k)
        if allowed is None:
            continue
        index = sounding_at(out, k * STEPS_PER_BAR + STEPS_PER_BAR // 2)
        if index is None:
            continue
        note = out[index]
        if any(note.rel % 12 in {x % 12 for x in triad(mode, d)} for d in allowed):
            continue
        tones = {x % 12 for x in triad(mode, allowed[0])}
        move = next(m for m in (-1, 1, -2, 2) if (note.rel + m) % 12 in tones)
        out[index] = Note(note.start, note.length, note.rel + move)
    return out

"""Attribution goes only to works that taught the model and consent now, short segments
included, and no work is favoured by its id."""

from __future__ import annotations

import json
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from inference.engine import Context, Engine, Params
from inference.form import PHRASE_BARS
from inference.music import STEPS_PER_BAR, Note, energy_token, tokens_to_notes
from inference.provenance import influences
from inference.train import MODEL_DIR

ENGINE = Engine()
MANIFEST = json.loads((MODEL_DIR / "training_manifest.json").read_text())
HELD_OUT = set(MANIFEST["held_out_works"])
TAUGHT = {w["work_id"] for w in MANIFEST["works"]} - HELD_OUT


def test_the_engine_attributes_over_trained_works_only() -> None:
    assert HELD_OUT and set(ENGINE.profiles) == TAUGHT & set(ENGINE.profiles) and not HELD_OUT & set(ENGINE.profiles)


notes = st.lists(st.builds(Note, st.integers(0, 63), st.integers(1, 16), st.integers(-12, 19)), max_size=6)


@settings(max_examples=200, deadline=None)
@given(notes=notes, banned=st.sets(st.sampled_from(sorted(TAUGHT)), max_size=100))
def test_a_held_out_or_non_consenting_work_never_receives_weight(notes: list[Note], banned: set[str]) -> None:
    profiles = {**ENGINE.profiles}
    allowed = (TAUGHT - banned) | HELD_OUT  # a held-out work in the allowed set still gets nothing
    weights = influences(notes, profiles, allowed)
    assert sum(w for _, w in weights) == 1_000_000 and all(w > 0 for _, w in weights)
    assert not {work for work, _ in weights} & (banned | HELD_OUT)


def test_segments_too_short_for_trigrams_are_attributed_by_their_own_notes_without_favourites() -> None:
    winners: Counter[str] = Counter()
    for tonic_rel in range(-5, 7):
        for length in (2, 4, 8):
            two = [Note(0, length, tonic_rel), Note(length, length, tonic_rel + 2)]
            weights = dict(influences(two, ENGINE.profiles, TAUGHT))
            assert sum(weights.values()) == 1_000_000
            winners.update(weights)
    assert len(winners) > 10  # the old fallback paid the same five largest ids whenever nothing matched
    nothing = dict(influences([], ENGINE.profiles, TAUGHT))  # no note at all: the model as a whole
    assert set(nothing) == TAUGHT and max(nothing.values()) - min(nothing.values()) <= 1


def test_ties_are_broken_without_favouring_ids() -> None:
    profiles = {f"wk-{n:03d}": {"0,0,4": 1} for n in range(40)}  # forty identical works
    firsts = Counter(influences([Note(0, 4, s), Note(4, 4, s), Note(8, 4, s)], profiles, set(profiles), top=1)[0][0]
                     for s in range(-12, 12))
    assert len(firsts) > 10  # different segments pick different tied works, not always the largest id


def test_generated_segments_weigh_only_allowed_trained_works() -> None:
    allowed = set(sorted(TAUGHT)[::2])
    segment = ENGINE.generate(Params(120, 0.5, "MAJOR", 0, 1), seed=5, allowed_works=allowed)
    assert {w for w, _ in segment.influences} <= allowed


def test_a_segment_is_attributed_over_its_phrase_so_far_and_never_ahead() -> None:
    """1-bar segments of a session: each is weighed over the notes of its phrase (form.PHRASE_BARS
    bars) from the phrase's first bar line to its own end; the phrase so far survives the generation log."""
    labels = json.loads((MODEL_DIR / "conditioning.json").read_text())
    alike = {w for w in TAUGHT if labels[w] == [4, energy_token(0.5)]}  # trained under MINOR at energy 0.5
    context, heard = None, []
    for bar in range(6):
        segment = ENGINE.generate(Params(100, 0.5, "MINOR", 2, 1), seed=40 + bar, context=context)
        heard.append(tokens_to_notes(list(segment.tokens)))
        start = bar - bar % PHRASE_BARS
        so_far = [Note(n.start + (b - start) * STEPS_PER_BAR, n.length, n.rel)
                  for b in range(start, bar + 1) for n in heard[b]]
        assert segment.influences == influences(so_far, ENGINE.profiles, alike)
        context = Context.from_bytes(segment.context.to_bytes())
        assert context.phrase == (() if (bar + 1) % PHRASE_BARS == 0
                                  else tuple((n.start, n.length, n.rel) for n in so_far))
    assert len(so_far) > len(heard[-1])  # the last segment's phrase holds an earlier bar too


def test_a_segment_is_attributed_to_works_trained_under_its_own_mode_and_energy() -> None:
    labels = json.loads((MODEL_DIR / "conditioning.json").read_text())
    assert set(labels) == TAUGHT
    for mode, energy in (("MAJOR", 0.9), ("MINOR", 0.2), ("MINOR", 0.5)):
        segment = ENGINE.generate(Params(140, energy, mode, 0, 2), seed=3)
        want = [3 if mode == "MAJOR" else 4, energy_token(energy)]
        assert segment.influences and all(labels[w] == want for w, _ in segment.influences)
    only = {w for w, label in labels.items() if label != [3, 7]}  # none of the label consents: any allowed work
    segment = ENGINE.generate(Params(140, 0.9, "MAJOR", 0, 2), seed=3, allowed_works=only)
    assert {w for w, _ in segment.influences} <= only

"""The copy guard: more than two bars of a training work's melody never come back."""

from __future__ import annotations

from inference.engine import Engine, Job, Params
from inference.memorization import LIMIT_PAIRS, LIMIT_STEPS, CopyGuard, pairs
from inference.music import Note, tokens_to_notes

TUNE = [(0, 4, 0), (4, 4, 2), (8, 4, 4), (12, 4, 5), (16, 8, 7), (24, 4, 5), (28, 4, 4), (32, 4, 2), (36, 8, 0)]


def notes(events: list[tuple[int, int, int]]) -> list[Note]:
    return [Note(s, length, rel) for s, length, rel in events]


def guard() -> CopyGuard:
    return CopyGuard.from_melodies({"wk-tune": pairs(notes(TUNE))})


def test_a_copy_longer_than_two_bars_is_found_in_any_key_and_after_a_rest() -> None:
    transposed_after_a_rest = [(s + 20, length, rel + 5) for s, length, rel in TUNE]
    assert guard().copies(notes(transposed_after_a_rest))
    assert guard().copies(notes([(0, 2, 9), (2, 2, 11)] + [(s + 4, n, r) for s, n, r in TUNE]))  # inside a melody


def test_two_bars_or_less_of_it_is_not_a_copy() -> None:
    pairs_ = pairs(notes(TUNE))
    # the longest stretch lasting at most two bars: pairs 0..k with durations summing to <= 32
    k = max(j for j in range(len(pairs_)) if sum(d for _, d in pairs_[:j + 1]) <= LIMIT_STEPS)
    assert not guard().copies(notes(TUNE[:k + 2]))
    assert guard().copies(notes(TUNE[:k + 3]))
    changed = list(TUNE)
    changed[4] = (16, 8, 8)  # one pitch different: the runs on either side are short
    assert not guard().copies(notes(changed))


def test_more_than_ten_short_notes_of_it_are_a_copy_too() -> None:
    run = [(2 * i, 2, (0, 2, 4, 5, 7, 5, 4, 2)[i % 8]) for i in range(LIMIT_PAIRS + 2)]  # 1.5 bars of eighths
    eighths = CopyGuard.from_melodies({"wk-eighths": pairs(notes(run))})
    assert eighths.copies(notes(run)) and not eighths.copies(notes(run[:LIMIT_PAIRS + 1]))


def test_runs_that_end_before_the_new_notes_were_checked_before() -> None:
    melody = notes([*TUNE, (44, 4, 12)])
    assert guard().copies(melody, new_from=len(melody) - 2)  # the copy reaches the second-to-last note
    assert not guard().copies(melody, new_from=len(melody))  # nothing new in it


def test_the_engine_samples_again_when_a_melody_copies_and_stays_deterministic() -> None:
    engine = Engine()
    engine.guard = None
    job = Job(Params(120.0, 0.5, "MAJOR", 0, 4), seed=11)
    (first,) = engine.generate_batch([job])
    heard = tokens_to_notes(first.tokens)
    engine.guard = CopyGuard.from_melodies({"wk-as-if-trained": pairs(heard)})  # as if it were a training work
    assert engine.guard.copies(heard)
    (again,) = engine.generate_batch([job])
    assert again.copy_resamples >= 1 and again.tokens != first.tokens
    assert not engine.guard.copies(tokens_to_notes(again.tokens))
    (replay,) = engine.generate_batch([job])
    assert replay.tokens == again.tokens and (replay.rendered.audio == again.rendered.audio).all()


def longest_shared(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> tuple[int, int]:
    """Longest common runs of two pair sequences, in sixteenths and in pairs (dynamic programming)."""
    steps, count = 0, 0
    previous = [(0, 0)] * (len(b) + 1)
    for x in a:
        current = [(0, 0)] * (len(b) + 1)
        for j, y in enumerate(b):
            if x == y:
                current[j + 1] = (previous[j][0] + x[1], previous[j][1] + 1)
                steps, count = max(steps, current[j + 1][0]), max(count, current[j + 1][1])
        previous = current
    return steps, count


def test_a_session_of_the_committed_model_copies_no_training_work() -> None:
    import json

    from inference.train import MODEL_DIR

    trained = json.loads((MODEL_DIR / "copy_guard.json").read_text())
    engine, context, melody = Engine(), None, []
    for i in range(16):  # 32 bars, chained as a session
        (segment,) = engine.generate_batch([Job(Params(120.0, (0.2, 0.5, 0.85)[i % 3], "MINOR", 0, 2), seed=700 + i,
                                                context=context)])
        context = segment.context
        melody += [Note(i * 32 + n.start, n.length, n.rel) for n in tokens_to_notes(segment.tokens)]
    ours = pairs(melody)
    shared = [longest_shared(ours, [(a, b) for a, b in work]) for work in trained.values()]
    assert max(s for s, _ in shared) <= LIMIT_STEPS and max(c for _, c in shared) <= LIMIT_PAIRS

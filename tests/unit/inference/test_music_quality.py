"""The music engine's promises, measured on its audio: exact tempo, in key, loudness,
no clipping, seamless joins, determinism, attribution that sums exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inference.analysis import estimate_tempo, fit_glide, max_join_jump
from inference.engine import Engine, Params
from inference.music import scale
from inference.render import SAMPLE_RATE, loudness, target_lufs
from inference.train import train
from kit.tempo import beat_edges

ENGINE = Engine()


@pytest.mark.parametrize("bpm", [60, 72, 90, 110, 128, 150, 172, 200])
@pytest.mark.parametrize("energy", [0.1, 0.5, 0.9])
def test_tempo_measured_from_the_audio_is_within_one_percent(bpm: int, energy: float) -> None:
    segment = ENGINE.generate(Params(bpm, energy, "MAJOR" if bpm % 20 else "MINOR", bpm % 12, 8), seed=bpm)
    measured = estimate_tempo(segment.rendered.audio)
    assert abs(measured - bpm) / bpm < 0.01, f"asked {bpm} BPM, measured {measured:.2f}"


@pytest.mark.parametrize(("start", "end", "bars", "energy"),
                         [(90.0, 170.0, 2, 0.5), (170.0, 105.0, 2, 0.9), (70.0, 87.5, 1, 0.2), (128.0, 128.0, 2, 0.6)])
def test_a_glide_moves_every_beat_measured_from_the_audio(start: float, end: float, bars: int, energy: float) -> None:
    """A segment gliding from the tempo the one before it ended at: the beat grid that best explains
    its onsets (``fit_glide``, from the audio alone) starts and ends within 1% of the glide's tempi,
    with its bars: the tempo moves every beat, on the grid, not once a segment."""
    before = ENGINE.generate(Params(start, energy, "MAJOR", 0, bars), seed=2)
    segment = ENGINE.generate(Params(end, energy, "MAJOR", 0, bars, tempo_from_bpm=start), seed=3,
                              context=before.context)
    assert len(segment.rendered.audio) == round(beat_edges(end, bars, start, SAMPLE_RATE)[-1])
    fitted_from, fitted_to, fitted_bars = fit_glide(segment.rendered.audio)
    assert fitted_bars == bars
    assert abs(fitted_from / start - 1) < 0.01 and abs(fitted_to / end - 1) < 0.01, (fitted_from, fitted_to)


def test_a_clip_no_whole_bar_grid_fits_is_refused() -> None:
    with pytest.raises(ValueError, match="no grid"):
        fit_glide(np.zeros((SAMPLE_RATE // 2, 2), dtype=np.float32))  # half a second: shorter than any bar


@pytest.mark.parametrize("bpm", [60, 123, 200])
def test_segments_are_cut_on_bar_lines(bpm: int) -> None:
    segment = ENGINE.generate(Params(bpm, 0.5, "MAJOR", 0, 4), seed=1)
    assert len(segment.rendered.audio) == round(4 * 16 * SAMPLE_RATE * 15 / bpm)


@pytest.mark.parametrize("mode", ["MAJOR", "MINOR"])
def test_melody_notes_stay_in_the_requested_scale(mode: str) -> None:
    for seed in range(5):
        segment = ENGINE.generate(Params(120, 0.6, mode, 5, 8), seed=seed)
        from inference.music import tokens_to_notes

        notes = tokens_to_notes(segment.tokens)
        assert notes
        assert {n.rel % 12 for n in notes} <= set(scale(mode))


@pytest.mark.parametrize("energy", [0.05, 0.5, 1.0])
def test_loudness_on_target_and_no_clipping(energy: float) -> None:
    audio = ENGINE.generate(Params(140, energy, "MAJOR", 9, 8), seed=7).rendered.audio
    assert abs(loudness(audio) - target_lufs(energy)) <= 1.0
    assert np.max(np.abs(audio)) < 1.0
    assert 20 * np.log10(np.max(np.abs(audio))) <= -0.99


def test_continuing_segments_join_without_a_discontinuity() -> None:
    first = ENGINE.generate(Params(128, 0.8, "MAJOR", 0, 4), seed=1)
    second = ENGINE.generate(Params(132, 0.8, "MAJOR", 0, 4), seed=2, context=first.context)
    assert max_join_jump(first.rendered.audio, second.rendered.audio) < 1.5
    # Guard: without the carried tail, the ringing sound is cut and the join jumps.
    cold = ENGINE.generate(Params(132, 0.8, "MAJOR", 0, 4), seed=2)
    assert max_join_jump(first.rendered.audio, cold.rendered.audio) > max_join_jump(
        first.rendered.audio, second.rendered.audio)


def test_same_seed_same_audio_and_another_seed_other_audio() -> None:
    params = Params(100, 0.4, "MINOR", 2, 4)
    a, b = ENGINE.generate(params, seed=42), ENGINE.generate(params, seed=42)
    assert np.array_equal(a.rendered.audio, b.rendered.audio)
    assert not np.array_equal(a.rendered.audio, ENGINE.generate(params, seed=43).rendered.audio)


def test_influences_sum_exactly_and_respect_generation_consent() -> None:
    segment = ENGINE.generate(Params(120, 0.5, "MAJOR", 0, 8), seed=3)
    assert sum(w for _, w in segment.influences) == 1_000_000
    banned = {work for work, _ in segment.influences}
    allowed = set(ENGINE.profiles) - banned
    again = ENGINE.generate(Params(120, 0.5, "MAJOR", 0, 8), seed=3, allowed_works=allowed)
    assert sum(w for _, w in again.influences) == 1_000_000
    assert not {work for work, _ in again.influences} & banned


@pytest.mark.parametrize(("field", "value"), [("tempo_bpm", 10), ("energy", 2), ("mode", "LYDIAN"),
                                              ("key_tonic", 12), ("bars", 0)])
def test_bad_parameters_are_refused(field: str, value: object) -> None:
    good = {"tempo_bpm": 120, "energy": 0.5, "mode": "MAJOR", "key_tonic": 0, "bars": 4}
    with pytest.raises(ValueError, match=field):
        Params(**{**good, field: value})  # type: ignore[arg-type]


def test_a_short_training_run_still_learns(tmp_path: Path) -> None:
    result = train(epochs=4, out=tmp_path, limit=24)
    assert result["losses"][-1] < 0.8 * result["losses"][0]
    assert (tmp_path / "weights.pt").exists() and (tmp_path / "loss_curve.png").exists()


def test_a_segment_is_the_same_whatever_is_batched_with_it_and_its_context_round_trips() -> None:
    from inference.engine import Context, Job

    jobs = [Job(Params(60 + i * 17, (i % 10) / 10, "MAJOR" if i % 2 else "MINOR", i % 12, 1 + i % 2), seed=100 + i)
            for i in range(6)]
    alone = [ENGINE.generate_batch([job])[0] for job in jobs]
    together = ENGINE.generate_batch(jobs)
    assert all(a.tokens == b.tokens and np.array_equal(a.rendered.audio, b.rendered.audio)
               for a, b in zip(alone, together, strict=True))
    context = Context.from_bytes(alone[0].context.to_bytes())
    assert context.tokens == alone[0].context.tokens and np.array_equal(context.tail, alone[0].rendered.tail)
    again = ENGINE.generate(Params(100, 0.5, "MAJOR", 0, 2), seed=9, context=context)
    direct = ENGINE.generate(Params(100, 0.5, "MAJOR", 0, 2), seed=9, context=alone[0].context)
    assert np.array_equal(again.rendered.audio, direct.rendered.audio)


def test_the_reused_synthesizer_renders_what_a_fresh_one_renders() -> None:
    """The SoundFont is loaded once per thread; every segment must still be the bytes a fresh
    synthesizer gives (one segment id = one audio), whatever was rendered before it."""
    import inference.render as render

    jobs = [(Params(60 + i * 23 % 141, (i * 3 % 10) / 10, "MAJOR" if i % 2 else "MINOR", i % 12, 1 + i % 2), 300 + i)
            for i in range(12)]
    reused = [ENGINE.generate(params, seed) for params, seed in jobs]  # one synthesizer, one segment after another
    fresh = []
    for params, seed in jobs:
        render.reset_synthesizer()  # forget this thread's synthesizer: the next segment loads a new one
        fresh.append(ENGINE.generate(params, seed))
    assert all(np.array_equal(a.rendered.audio, b.rendered.audio) and np.array_equal(a.rendered.tail, b.rendered.tail)
               for a, b in zip(reused, fresh, strict=True))

"""The arrangement and the level follow energy (a cool-down is quieter and sparser than a sprint),
and neighbours of one energy join level, measured on the engine's audio and note events."""

from __future__ import annotations

import numpy as np
import pytest

from inference.engine import Context, Engine, Params
from inference.render import CRASH, DRUMS, KICK, REST, SLEEP, SNARE, arrange, energy_of, loudness, target_lufs

ENGINE = Engine()


def drums(energy: float) -> set[int]:
    events = arrange([], [0, 4, 3, 0], "MAJOR", 0, energy, 2, np.random.default_rng(1))
    return {e.key for e in events if e.channel == DRUMS and e.velocity}


def kicks(energy: float) -> int:
    events = arrange([], [0, 4, 3, 0], "MAJOR", 0, energy, 2, np.random.default_rng(1))
    return sum(1 for e in events if e.channel == DRUMS and e.key == KICK and e.velocity)


def test_no_percussion_for_sleep_no_kick_at_rest_four_on_the_floor_only_when_driving() -> None:
    assert drums(SLEEP - 0.05) == set()
    assert KICK not in drums(REST - 0.05) and drums(REST - 0.05)
    assert kicks(0.5) == 4 and kicks(0.9) == 8  # two bars: beats 1 and 3, then every beat


def test_a_cool_down_is_quieter_than_a_sprint() -> None:
    sprint = ENGINE.generate(Params(165, 0.9, "MAJOR", 7, 2), seed=1).rendered.audio
    rest = ENGINE.generate(Params(70, 0.2, "MAJOR", 7, 1), seed=1).rendered.audio
    assert loudness(sprint) - loudness(rest) >= 0.7 * (target_lufs(0.9) - target_lufs(0.2))


def test_the_level_glides_from_the_predecessors_and_joins_of_one_energy_stay_level() -> None:
    first = ENGINE.generate(Params(120, 0.8, "MAJOR", 0, 2), seed=1)
    calmer = ENGINE.generate(Params(120, 0.5, "MAJOR", 0, 2), seed=2, context=first.context)
    same = ENGINE.generate(Params(120, 0.8, "MAJOR", 0, 2), seed=2, context=first.context)
    quarter = len(calmer.rendered.audio) // 4
    # The calmer segment starts near its predecessor's level and ends at its own.
    assert loudness(calmer.rendered.audio[:quarter]) > loudness(calmer.rendered.audio[-quarter:]) + 1.5
    assert abs(loudness(same.rendered.audio) - target_lufs(0.8)) <= 1.0
    assert first.context.lufs == pytest.approx(target_lufs(0.8))


def test_a_context_logged_before_levels_followed_energy_still_continues() -> None:
    first = ENGINE.generate(Params(100, 0.4, "MAJOR", 0, 1), seed=1)
    old = Context(first.context.tokens, first.context.tail, first.context.degree)  # no level
    again = Context.from_bytes(old.to_bytes())
    assert again.lufs is None
    segment = ENGINE.generate(Params(100, 0.4, "MAJOR", 0, 1), seed=2, context=again)
    assert abs(loudness(segment.rendered.audio) - target_lufs(0.4)) <= 1.0
    assert Context.from_bytes(first.context.to_bytes()).lufs == pytest.approx(target_lufs(0.4))


def _drum_hits(events: list, key: int, since: float) -> list[int]:
    return [e.velocity for e in sorted(events, key=lambda e: e.step)
            if e.channel == DRUMS and e.key == key and e.velocity and e.step >= since]


def test_rising_energy_builds_up_and_a_layer_entering_is_marked() -> None:
    """A segment louder than its predecessor ends in a snare roll, louder hit by hit; one whose rise brings
    in a layer opens with a crash; at constant energy neither (the join stays level)."""
    def events(energy: float, previous: float | None) -> list:
        return arrange([], [0, 4], "MAJOR", 0, energy, 1, np.random.default_rng(1), previous=previous)

    roll = _drum_hits(events(0.45, 0.35), SNARE, since=12)
    assert len(roll) == 4 and roll == sorted(roll) and roll[-1] - roll[0] >= 30
    assert len(_drum_hits(events(0.45, 0.45), SNARE, since=12)) < 4
    assert len(_drum_hits(events(0.45, 0.55), SNARE, since=12)) < 4  # falling: no build-up
    assert _drum_hits(events(0.55, 0.45), CRASH, since=0)  # MOVING reached: the snare layer enters
    assert not _drum_hits(events(0.45, 0.35), CRASH, since=0) and not _drum_hits(events(0.55, 0.55), CRASH, since=0)
    assert energy_of(target_lufs(0.34)) == 0.34  # the previous energy is read back from the level it ended at

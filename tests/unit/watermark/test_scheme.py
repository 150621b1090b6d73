"""The watermark scheme on generated music: round trip, keys, integrity, a few fast attacks."""

from __future__ import annotations

import numpy as np
import pytest
from tests.watermark_clips import music_clips

from watermark.attacks import ATTACKS, ffmpeg_available
from watermark.scheme import (
    PAYLOAD_BITS,
    SAMPLE_RATE,
    AudioError,
    Key,
    _check_word,
    detect,
    embed,
    log_tail_bound,
    threshold,
    word_bits,
)

KEY = Key("wk-test", b"0123456789abcdef0123456789abcdef")
OTHER = Key("wk-other", b"fedcba9876543210fedcba9876543210")
PAYLOAD = 0xC0FFEE42


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    return music_clips(3, seconds=8.0)


@pytest.fixture(scope="module")
def marked(clips: list[np.ndarray]) -> list[np.ndarray]:
    return [embed(c, KEY, PAYLOAD + i) for i, c in enumerate(clips)]


def snr_db(clean: np.ndarray, marked: np.ndarray) -> float:
    clean = clean.astype(np.float64)
    return float(10 * np.log10(np.sum(clean ** 2) / np.sum((marked - clean) ** 2)))


def test_round_trip_decodes_the_payload_blind_and_is_quiet(clips: list[np.ndarray], marked: list[np.ndarray]) -> None:
    for i, (clean, m) in enumerate(zip(clips, marked, strict=True)):
        assert m.shape == clean.shape and m.dtype == np.float32
        assert snr_db(clean, m) >= 28.0
        found = detect(m, SAMPLE_RATE, [OTHER, KEY])
        assert found.detected and found.key_id == KEY.key_id and found.payload == PAYLOAD + i
        assert found.confidence > 0.999999


def test_unmarked_music_and_the_wrong_key_detect_nothing(clips: list[np.ndarray], marked: list[np.ndarray]) -> None:
    for clean, m in zip(clips, marked, strict=True):
        assert not detect(clean, SAMPLE_RATE, [KEY]).detected
        wrong = detect(m, SAMPLE_RATE, [OTHER])
        assert not wrong.detected and wrong.payload is None and wrong.score < 1.0


def test_payload_integrity_check_rejects_a_flipped_bit() -> None:
    bits = word_bits(KEY, PAYLOAD)
    assert _check_word(KEY, bits) == PAYLOAD
    for i in range(len(bits)):
        flipped = bits.copy()
        flipped[i] ^= 1
        assert _check_word(KEY, flipped) is None
    assert _check_word(OTHER, bits) is None  # the CRC covers the key id
    with pytest.raises(ValueError):
        word_bits(KEY, 1 << 32)


def test_threshold_matches_its_designed_false_positive_rate() -> None:
    units, hypotheses, fpr = 180, 5000, 1e-9
    t = threshold(units, hypotheses, fpr)
    codewords = 2.0 ** PAYLOAD_BITS  # the union over every valid word the decoder could pick
    assert hypotheses * codewords * np.exp(log_tail_bound(t, units)) == pytest.approx(fpr, rel=0.05)
    # Monte Carlo: the bound holds for a fixed codeword's correlation with uniform phases
    rng = np.random.default_rng(3)
    stats = np.cos(rng.uniform(0, 2 * np.pi, size=(200_000, units))).sum(axis=1)
    loose = threshold(units, 1, 1e-3 * codewords)  # P(stat >= loose) <= 1e-3 by the bound
    assert np.mean(stats >= loose) <= 1e-3
    assert np.mean(stats >= 0.7 * loose) > 1e-4  # and the bound is not vacuous


@pytest.mark.parametrize("attack", ["crop_3s", "gain_0.1", "lowpass_5k", "mp3_128", "resample_32k"])
def test_survives_fast_attacks(marked: list[np.ndarray], attack: str) -> None:
    if attack in ("lowpass_5k", "mp3_128", "resample_32k") and not ffmpeg_available():
        pytest.fail("ffmpeg is missing: make venv installs it")
    rng = np.random.default_rng(11)
    audio, rate = ATTACKS[attack](marked[0], SAMPLE_RATE, rng)
    found = detect(audio, rate, [KEY])
    assert found.detected and found.payload == PAYLOAD


def test_too_short_or_silent_audio_is_a_clear_error() -> None:
    with pytest.raises(AudioError, match="too short"):
        detect(np.zeros(SAMPLE_RATE), SAMPLE_RATE, [KEY])
    with pytest.raises(AudioError, match="silent"):
        detect(np.zeros(5 * SAMPLE_RATE), SAMPLE_RATE, [KEY])
    with pytest.raises(AudioError, match="at least"):
        embed(np.zeros(SAMPLE_RATE), KEY, 1)

"""The watermark scheme on generated music: round trip, keys, integrity, a few fast attacks."""

from __future__ import annotations

import numpy as np
import pytest
from tests.watermark_clips import music_clips

from watermark.attacks import ATTACKS, ffmpeg_available
from watermark.scheme import (
    CLIP_KEEP,
    CLIPPED_MIN,
    PAYLOAD_BITS,
    SAMPLE_RATE,
    AudioError,
    Key,
    _check_word,
    clip_domain,
    clipped_share,
    detect,
    embed,
    log_tail_bound,
    threshold,
    verify,
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
        assert found.confidence > 0.999999 and found.domain == "linear"


def test_unmarked_music_and_the_wrong_key_detect_nothing(clips: list[np.ndarray], marked: list[np.ndarray]) -> None:
    for clean, m in zip(clips, marked, strict=True):
        assert not detect(clean, SAMPLE_RATE, [KEY]).detected
        wrong = detect(m, SAMPLE_RATE, [OTHER])
        assert not wrong.detected and wrong.payload is None and wrong.score < 1.0


def hard_clip(audio: np.ndarray, gain: float) -> np.ndarray:
    return np.clip(audio.astype(np.float64) * gain, -1.0, 1.0)


def test_the_clip_domain_is_unchanged_by_gain_with_hard_clipping(clips: list[np.ndarray]) -> None:
    clean = clips[0].astype(np.float64)
    reference = clip_domain(list(clean.T))
    for gain in (0.5, 3.0, 10.0):
        attacked = hard_clip(clean, gain)
        assert np.max(np.mean(np.abs(attacked) >= 1.0, axis=0)) < 1 - CLIP_KEEP
        np.testing.assert_allclose(clip_domain(list(attacked.T)) / gain, reference, atol=1e-9)
    # the limit: once more than 1 - CLIP_KEEP of a channel is clipped, the invariance is gone
    assert not np.allclose(clip_domain(list(hard_clip(clean, 300.0).T)) / 300.0, reference, atol=1e-3)


def test_hard_clipped_audio_is_also_read_in_the_clip_domain(clips: list[np.ndarray], marked: list[np.ndarray]) -> None:
    assert clipped_share(marked[0]) < CLIPPED_MIN  # unclipped: the linear domain only
    clipped = hard_clip(marked[0], 10.0)
    assert clipped_share(clipped) > CLIPPED_MIN
    found = detect(clipped, SAMPLE_RATE, [KEY])
    assert found.detected and found.payload == PAYLOAD and found.domain == "clip"
    assert np.mean(found.bits == word_bits(KEY, PAYLOAD)) == 1.0
    # unmarked clipped music and the wrong key stay undetected in both domains
    assert not detect(hard_clip(clips[1], 10.0), SAMPLE_RATE, [KEY]).detected
    assert not detect(clipped, SAMPLE_RATE, [OTHER]).detected


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


def test_verifying_at_the_embedded_alignment_agrees_with_blind_detection(clips: list[np.ndarray],
                                                                        marked: list[np.ndarray]) -> None:
    """The service checks each segment it marks without the sync search; same decision, same score,
    and the blind threshold, so nothing verifies that the detector would not find."""
    for i, (clip, audio) in enumerate(zip(clips, marked, strict=True)):
        blind, known = detect(audio, SAMPLE_RATE, [KEY]), verify(audio, SAMPLE_RATE, KEY)
        assert known.detected and known.payload == PAYLOAD + i and known.key_id == KEY.key_id
        assert known.score == pytest.approx(blind.score) and blind.offset_samples == known.offset_samples == 0
        assert not verify(clip, SAMPLE_RATE, KEY).detected  # unmarked
        assert not verify(audio, SAMPLE_RATE, OTHER).detected  # another key


def test_verification_is_held_to_the_detector_s_threshold_for_the_whole_ring(marked: list[np.ndarray]) -> None:
    blind = detect(marked[0], SAMPLE_RATE, [KEY, OTHER])
    known = verify(marked[0], SAMPLE_RATE, KEY, ring_size=2)
    assert known.detected and known.score == pytest.approx(blind.score)
    assert known.score < verify(marked[0], SAMPLE_RATE, KEY).score  # two keys: a higher threshold

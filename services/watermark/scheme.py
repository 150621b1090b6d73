"""The Entrain watermark: keyed spread-transform dither modulation of spectral contrast,
read in two domains.

Pure numpy; no pretrained network. The derivation and its measured limits are in the
README ("Watermark"); in short:

* **Feature.** STFT with a 2048-point sqrt-Hann window, hop 1024 at 44.1 kHz (perfect
  reconstruction), band 500-5000 Hz (what survives MP3/AAC/Opus, lowpass 5 kHz and
  band-pass). Frames pair up (2t, 2t+1). A *unit* is a keyed set of (pair, bin) cells with
  keyed signs u; its contrast is ``p = sum u (A2 - A1) / sum (A2 + A1)`` with A the
  magnitudes. A ratio of sums: blind to gain; dominated by the loud cells, so the quiet
  cells that codecs and noise destroy barely count.
* **Two domains.** *Linear* units (9 per group of two pairs, ~40 cells) are read in the mono
  mix. *Clip* units (6 per group, 10 cells) are read in the clip domain: each channel
  hard-clipped at the 40th percentile of its |amplitude|, then mixed. Gain followed by hard
  clipping of fewer than 60% of a channel's samples leaves that percentile's order
  statistics in place, so the clip domain of such audio is exactly the clip domain of the
  original times the gain. Hard clipping compresses linear contrast by about half and adds
  host-dependent errors larger than the lattice step, which no detector can undo; in the
  clip domain it changes nothing. The detector reads the clip domain only when a channel
  has CLIPPED_MIN of its samples at its peak.
* **Layout.** A block of ``BLOCK_FRAMES`` frames (1.86 s) repeats through the audio; 180
  linear and 120 clip units per block, each domain carrying the 48-bit word (32-bit payload
  + 16 check bits over key id and payload), the key also drawing cells, signs and dithers.
* **Embedding (STDM).** Each unit's p moves to the nearest point of its bit's lattice
  ``delta*Z + dither + bit*delta/2`` (delta 0.16 linear, 0.035 clip: its channel is exact):
  scaling A2 by (1+u m) and A1 by (1-u m) turns p into (p+m)/(1+p m), solved exactly for m
  in the linear domain. The music's own p is cancelled, not fought, so the host is no noise to
  the detector. STFT/ISTFT passes make the change consistent: three for the linear units,
  three for the clip units (m = 0.7 x the lattice error over the unit's transfer, how far its
  clip-domain contrast moved per unit of move on the previous pass: moves of neighbouring
  units also move it, hence the under-relaxation), one more for the linear units, whose cells
  the clip moves spill into. SNR ~32 dB overall.
* **Detection (blind).** Phases ``phi = 2 pi (p/c - dither)/delta`` (c: a contrast scale;
  noise, codecs and echo shrink linear contrast; the clip domain needs c = 1), on the mono
  mix decimated to 11.025 kHz, for every sub-hop offset, cyclic block shift and c. The
  occurrences of one unit label share its dither, so each label contributes once: the
  cosine of the circular mean of its occurrences' phases. Bit votes sum those per bit; the
  decoder takes their signs (and Chase flips) until the check bits match; T is the votes'
  correlation with the decoded codeword. Without the mark (or with another key) each label's
  angle is uniform (its dither is), so for any fixed codeword T has MGF at most I0(lambda)^M;
  the Chernoff bound with a union over all 2^32 valid codewords and all hypotheses of both
  domains gives the threshold on T for the designed false-positive rate per analysed window.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import fft as sfft
from scipy.optimize import minimize_scalar
from scipy.signal import resample_poly
from scipy.special import i0e

from kit.audio import AudioError

SAMPLE_RATE = 44_100
N_FFT = 2048
HOP = N_FFT // 2
LOW_HZ, HIGH_HZ = 500.0, 5000.0
BIN_LO = math.ceil(LOW_HZ * N_FFT / SAMPLE_RATE)
BIN_HI = math.floor(HIGH_HZ * N_FFT / SAMPLE_RATE)
N_BINS = BIN_HI - BIN_LO + 1
BLOCK_FRAMES = 80  # 1.86 s; any 3 s crop holds one whole block
BLOCK_PAIRS = BLOCK_FRAMES // 2
GROUP_PAIRS = 2
GROUPS = BLOCK_PAIRS // GROUP_PAIRS
LINEAR_UNITS_PER_GROUP = 9  # ~40 cells each
CLIP_UNITS_PER_GROUP = 6
CLIP_UNIT_CELLS = 10  # their channel is exact: small units suffice
UNITS_PER_GROUP = LINEAR_UNITS_PER_GROUP + CLIP_UNITS_PER_GROUP
PAYLOAD_BITS = 32
CRC_BITS = 16
WORD_BITS = PAYLOAD_BITS + CRC_BITS
DELTA = 0.16  # lattice step of a linear unit's contrast
DELTA_CLIP = 0.035  # lattice step of a clip unit's contrast (its channel is exact: no noise margin)
CLIP_KEEP = 0.4  # clip domain: each channel clipped at the 40th percentile of its |amplitude|
CLIPPED_MIN = 0.005  # the clip path runs when this share of a channel's samples sit at its peak
TRANSFER_PRIOR = 1e-4  # weight of the mean transfer in each unit's estimate (a move of 0.01)
CLIP_TRANSFER = 0.45  # first guess of d(clip-domain contrast) / d(linear contrast); then measured
MAX_MOVE = 0.5  # largest contrast move per embedding pass
DECIMATE = 4  # detection runs at 11.025 kHz: 512-point frames, hop 256
SUBHOP_STEPS = 8  # coarse sync grid: HOP / 8 = 128 samples at 44.1 kHz
FINE_STEPS = 8  # fine sync grid: 16 samples at 44.1 kHz
EMBED_PASSES = 3  # STFT/ISTFT passes placing the linear units...
CLIP_PASSES = 3  # ... then the clip units, then one more linear pass
MIN_TRANSFER = 0.1
RELAX = 0.7  # under-relaxed: a clip unit's contrast also moves with its neighbours' moves

CONTRAST_SCALES = np.array([1.0, 0.9, 0.8, 0.7], dtype=np.float32)  # noise, echo and codecs shrink contrast
COARSE_SCALES = CONTRAST_SCALES[[0, 2]]  # the coarse sync search tries two
CHASE_BITS = 8  # soft decoding: try flips of the 8 least reliable bits against the CRC
DESIGN_FPR = 1e-9  # per analysed window, over every sync hypothesis


@dataclass(frozen=True)
class Key:
    key_id: str
    secret: bytes

    @property
    def key_number(self) -> bytes:
        return hashlib.sha256(self.key_id.encode()).digest()[:2]


@dataclass(frozen=True)
class _Layout:
    """Keyed placement of units inside a block: for each pair slot and bin, its unit and sign.

    Unit ``g * UNITS_PER_GROUP + k`` is a linear unit for k < LINEAR_UNITS_PER_GROUP and a
    clip unit otherwise (which cells belong to which k is keyed)."""
    unit: np.ndarray  # (BLOCK_PAIRS, N_BINS) unit index within the block
    sign: np.ndarray  # (BLOCK_PAIRS, N_BINS) +-1
    dither: np.ndarray  # (units,) in [0, delta)
    delta: np.ndarray  # (units,) lattice step: DELTA or DELTA_CLIP
    clip: np.ndarray  # (units,) bool: the unit's contrast is read in the clip domain
    bit_of_unit: np.ndarray  # (units,) which word bit each unit carries
    size: np.ndarray  # (units,) pairs per unit

    @property
    def units(self) -> int:
        return len(self.dither)


@lru_cache(maxsize=16)
def _layout(secret: bytes) -> _Layout:
    seed = int.from_bytes(hmac.new(secret, b"entrain-watermark-layout-v2", "sha256").digest()[:8], "big")
    rng = np.random.default_rng(seed)
    unit = np.empty((BLOCK_PAIRS, N_BINS), dtype=np.int64)
    clip_cells = CLIP_UNITS_PER_GROUP * CLIP_UNIT_CELLS
    k = np.concatenate([np.arange(GROUP_PAIRS * N_BINS - clip_cells) % LINEAR_UNITS_PER_GROUP,
                        LINEAR_UNITS_PER_GROUP + np.arange(clip_cells) % CLIP_UNITS_PER_GROUP])
    for g in range(GROUPS):
        labels = k + g * UNITS_PER_GROUP
        unit[g * GROUP_PAIRS:(g + 1) * GROUP_PAIRS] = rng.permutation(labels).reshape(GROUP_PAIRS, N_BINS)
    units = GROUPS * UNITS_PER_GROUP
    sign = rng.choice(np.array([-1.0, 1.0]), size=(BLOCK_PAIRS, N_BINS))
    clip = np.arange(units) % UNITS_PER_GROUP >= LINEAR_UNITS_PER_GROUP
    delta = np.where(clip, DELTA_CLIP, DELTA).astype(np.float32)  # the detector's phases are float32
    dither = (rng.uniform(0.0, 1.0, size=units) * delta).astype(np.float32)
    bit_of_unit = np.empty(units, dtype=np.int64)
    for domain in (~clip, clip):  # each domain carries the whole word
        bit_of_unit[domain] = rng.permutation(np.arange(int(domain.sum())) % WORD_BITS)
    return _Layout(unit, sign, dither, delta, clip, bit_of_unit, np.bincount(unit.ravel(), minlength=units))


def crc16(data: bytes) -> int:
    """The 16 check bits: the low half of CRC-32 (any error pattern in <= 16 bits is caught)."""
    return zlib.crc32(data) & 0xFFFF


def word_bits(key: Key, payload: int) -> np.ndarray:
    """48 bits: payload (32) then CRC-16 over key number and payload."""
    if not 0 <= payload < 1 << PAYLOAD_BITS:
        raise ValueError(f"payload must be a {PAYLOAD_BITS}-bit unsigned integer")
    body = payload.to_bytes(4, "big")
    word = (payload << CRC_BITS) | crc16(key.key_number + body)
    return np.array([(word >> (WORD_BITS - 1 - i)) & 1 for i in range(WORD_BITS)], dtype=np.int64)


def _check_word(key: Key, bits: np.ndarray) -> int | None:
    word = int("".join(str(int(b)) for b in bits), 2)
    payload = word >> CRC_BITS
    ok = (word & 0xFFFF) == crc16(key.key_number + payload.to_bytes(4, "big"))
    return payload if ok else None


# --- signal plumbing ----------------------------------------------------------------

def _sqrt_hann(n: int) -> np.ndarray:
    return np.sqrt(0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n))


# Transforms run in single precision: the mark is ~30 dB below the music, float32 rounding ~140 dB.
_WINDOW = _sqrt_hann(N_FFT).astype(np.float32)
_WINDOW_D = _sqrt_hann(N_FFT // DECIMATE).astype(np.float32)


def _stft(x: np.ndarray) -> np.ndarray:
    frames = np.lib.stride_tricks.sliding_window_view(np.asarray(x, dtype=np.float32), N_FFT)[::HOP]
    spec: np.ndarray = sfft.rfft(frames * _WINDOW, axis=-1, workers=1)
    return spec


def _istft(spec: np.ndarray, length: int) -> np.ndarray:
    """Overlap-add at half-frame hop: each output chunk of HOP samples is the second half
    of one frame plus the first half of the next."""
    frames = (sfft.irfft(spec, n=N_FFT, axis=-1, workers=1) * _WINDOW).reshape(len(spec), 2, HOP)
    chunks = np.zeros((len(spec) + 1, HOP), dtype=np.float32)
    chunks[:-1] += frames[:, 0]
    chunks[1:] += frames[:, 1]
    out = np.zeros(length, dtype=np.float32)
    n = min(length, chunks.size)
    out[:n] = chunks.ravel()[:n]
    return out


def to_mono(audio: np.ndarray, sample_rate: int, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Mono mix resampled to ``rate``."""
    x = np.asarray(audio, dtype=np.float64)
    if x.ndim == 2:
        x = x @ np.full(x.shape[1], 1.0 / x.shape[1])  # a matrix product: mean(axis=1) is slow here
    if x.ndim != 1:
        raise AudioError("audio must be mono or (samples, channels)")
    if sample_rate <= 0:
        raise AudioError(f"invalid sample rate {sample_rate}")
    if sample_rate != rate:
        g = math.gcd(rate, int(sample_rate))
        x = resample_poly(x, rate // g, int(sample_rate) // g)
    return x


# --- embedding ----------------------------------------------------------------------

def _change(gain: np.ndarray, bins: int) -> np.ndarray:
    """The spectral change a band log-gain makes: exp(gain) - 1 in band, 0 elsewhere."""
    change = np.zeros((len(gain), bins), dtype=np.float32)
    change[:, BIN_LO:BIN_HI + 1] = np.expm1(gain)
    return change


def clip_levels(channels: list[np.ndarray]) -> np.ndarray:
    """Each channel's clip level: the CLIP_KEEP quantile of its |amplitude|."""
    return np.array([np.quantile(np.abs(c), CLIP_KEEP) for c in channels])


def clip_domain(channels: list[np.ndarray], levels: np.ndarray | None = None) -> np.ndarray:
    """The clip domain of audio given as 1-D channels: each channel hard-clipped at its
    ``clip_levels``, then mixed to mono.

    Gain followed by hard clipping of fewer than 1 - CLIP_KEEP of a channel's samples leaves
    that quantile's order statistics in place, so the clip domain of the attacked audio is
    the clip domain of the original times the gain: contrasts read there are unchanged."""
    levels = clip_levels(channels) if levels is None else levels
    out = np.zeros(len(channels[0]), dtype=channels[0].dtype)
    for c, level in zip(channels, levels, strict=True):
        out += np.minimum(np.maximum(c, -level), level)
    return out / len(channels)


def _contrasts(spec: np.ndarray, unit_ids: np.ndarray, signs: np.ndarray, n_units: int) -> np.ndarray:
    """Every unit occurrence's contrast p = sum u (A2 - A1) / sum (A2 + A1)."""
    mag = np.abs(spec[:, BIN_LO:BIN_HI + 1])
    pairs = len(unit_ids)
    a1, a2 = mag[0:2 * pairs:2], mag[1:2 * pairs:2]
    num = np.bincount(unit_ids.ravel(), weights=((a2 - a1) * signs).ravel(), minlength=n_units)
    den = np.bincount(unit_ids.ravel(), weights=(a2 + a1).ravel(), minlength=n_units) + 1e-12
    return num / den


def embed(audio: np.ndarray, key: Key, payload: int) -> np.ndarray:
    """Watermark 44.1 kHz audio, (samples,) or (samples, channels). The same gain mask is
    applied to every channel, so the mono mix carries the mark. Returns float32.

    Linear units are placed on their lattice in the mono mix, clip units in the clip
    domain (``clip_domain``). A clip unit's contrast there moves by a fraction ``transfer``
    of its move in the mix; the first pass guesses it, later passes measure it."""
    x = np.asarray(audio, dtype=np.float64)
    stereo = x if x.ndim == 2 else x[:, None]
    n_frames = (len(stereo) - N_FFT) // HOP + 1
    if n_frames < BLOCK_FRAMES:
        raise AudioError(f"audio must be at least {(BLOCK_FRAMES + 1) * HOP / SAMPLE_RATE:.2f} s long")
    layout = _layout(key.secret)
    bits = word_bits(key, payload)
    target = layout.dither + bits[layout.bit_of_unit] * layout.delta / 2
    length = len(stereo)
    channels = [stereo[:, c].astype(np.float32) for c in range(stereo.shape[1])]
    hosts = [_stft(c) for c in channels]
    # The clip levels of the unmarked audio: the mark moves them by far less than the lattice step.
    levels = clip_levels(channels)
    gain = np.zeros((n_frames, N_BINS))  # accumulated log gain on the band
    pairs = n_frames // 2
    rows = np.arange(pairs) % BLOCK_PAIRS
    occurrence = np.arange(pairs) // BLOCK_PAIRS
    unit_ids = layout.unit[rows] + (occurrence * layout.units)[:, None]  # (pairs, N_BINS)
    signs = layout.sign[rows]
    n_units = (occurrence[-1] + 1) * layout.units
    per_unit = np.arange(n_units) % layout.units
    whole = np.bincount(unit_ids.ravel(), minlength=n_units) == layout.size[per_unit]  # not cut by the end
    clip, delta, goal = layout.clip[per_unit] & whole, layout.delta[per_unit], target[per_unit]
    linear = ~layout.clip[per_unit] & whole

    mono, host_mono = np.mean(channels, axis=0), np.mean(hosts, axis=0)  # the STFT is linear
    want: np.ndarray | None = None

    def move_by(move: np.ndarray) -> None:
        """Add a contrast move per unit to the accumulated gain."""
        step = np.clip(move, -MAX_MOVE, MAX_MOVE)[unit_ids] * signs
        gain[1:2 * pairs:2] += np.log1p(step)
        gain[0:2 * pairs:2] += np.log1p(-step)

    def marked_channels() -> list[np.ndarray]:
        change = _change(gain, hosts[0].shape[1])
        return [c + _istft(h * change, length) for c, h in zip(channels, hosts, strict=True)]

    def place_linear() -> None:
        """One pass for the linear units, in the mono mix (one ISTFT): m solved exactly."""
        nonlocal want
        marked = mono + _istft(host_mono * _change(gain, host_mono.shape[1]), length) if np.any(gain) else mono
        proj = _contrasts(_stft(marked), unit_ids, signs, n_units)
        if want is None:  # the lattice point nearest the music's own contrast, kept: no flip-flops
            want = goal + delta * np.round((proj - goal) / delta)
        move_by(np.where(linear, (want - proj) / (1 - proj * want), 0.0))

    for _ in range(EMBED_PASSES):
        place_linear()
    transfer, last = np.full(n_units, CLIP_TRANSFER), None
    for _ in range(CLIP_PASSES):  # then the clip units, in the clip domain: m over the measured transfer
        proj = _contrasts(_stft(clip_domain(marked_channels(), levels)), unit_ids, signs, n_units)
        if last is not None:  # each unit's transfer on its last move, shrunk to the mean
            moved, applied = proj - last[0], last[1]
            mean = float(np.clip(moved[clip] @ applied[clip] / max(applied[clip] @ applied[clip], 1e-12),
                                 MIN_TRANSFER, 1.0))
            transfer = np.clip((moved * applied + TRANSFER_PRIOR * mean) / (applied ** 2 + TRANSFER_PRIOR),
                               MIN_TRANSFER, 1.0)
        nearest = goal + delta * np.round((proj - goal) / delta)
        move = np.where(clip, RELAX * (nearest - proj) / transfer, 0.0)
        last = (proj, move)
        move_by(move)
    place_linear()  # the clip units' moves spill into linear cells: one more pass
    out = np.stack(marked_channels(), axis=1)
    peak = np.max(np.abs(out))
    if peak > 1.0:
        out /= peak
    return (out if x.ndim == 2 else out[:, 0]).astype(np.float32)


# --- detection ----------------------------------------------------------------------

@dataclass(frozen=True)
class Detection:
    detected: bool
    key_id: str | None
    payload: int | None
    score: float  # T / threshold: >= 1 means the presence test passed
    statistic: float  # T: correlation of the bit votes with the decoded codeword
    units: int
    offset_samples: int
    bits: np.ndarray | None
    confidence: float  # 1 - upper bound on the false-positive probability
    domain: str = "linear"  # where the mark was read: "linear" or "clip" (hard-clipped audio)


def log_tail_bound(t: float, m: int) -> float:
    """ln of the Chernoff bound on P(X >= t), X a sum of m independent terms w cos(theta) with
    theta uniform and |w| <= 1 (MGF at most I0(lambda)^m)."""
    if t <= 0 or m == 0:
        return 0.0

    def f(lam: float) -> float:
        return -lam * t + m * (math.log(i0e(lam)) + lam)

    res = minimize_scalar(f, bounds=(1e-6, 50.0), method="bounded")
    return min(0.0, float(res.fun))


@lru_cache(maxsize=4096)
def threshold(units: int, hypotheses: int, fpr: float = DESIGN_FPR) -> float:
    """Smallest t with hypotheses * 2^32 * P(sum_b c_b V_b >= t | no mark) <= fpr (Chernoff).

    The decision statistic is the correlation of the bit votes with the decoded codeword
    c. Without a mark, each unit label's term is w cos(theta) with theta uniform (its
    keyed dither) and |w| <= 1, so for any fixed codeword the MGF is at most
    I0(lambda)^M; a union over the 2^32 valid codewords (payload + check) covers whatever
    the decoder picks, Chase trials included."""
    target = math.log(fpr / hypotheses) - PAYLOAD_BITS * math.log(2)
    lo, hi = 0.0, float(units)
    for _ in range(50):
        mid = (lo + hi) / 2
        if log_tail_bound(mid, units) > target:
            lo = mid
        else:
            hi = mid
    return hi


@dataclass(frozen=True, eq=False)  # compared and hashed by identity (two module constants)
class _Domain:
    """Where a detection path reads contrasts: which units of each group, which contrast scales."""
    name: str
    first: int  # first unit index k within a group
    count: int  # units per group
    scales: np.ndarray  # contrast scales of the fine search
    coarse_scales: np.ndarray  # ... and of the coarse one


LINEAR = _Domain("linear", 0, LINEAR_UNITS_PER_GROUP, CONTRAST_SCALES, COARSE_SCALES)
_EXACT = np.ones(1, dtype=np.float32)  # the clip domain loses no contrast: one scale
CLIP = _Domain("clip", LINEAR_UNITS_PER_GROUP, CLIP_UNITS_PER_GROUP, _EXACT, _EXACT)


@lru_cache(maxsize=32)
def _unit_matrix(secret: bytes, domain: _Domain) -> np.ndarray:
    """(N_BINS, BLOCK_PAIRS * domain.count): signed bin -> unit map of every pair slot."""
    layout = _layout(secret)
    a = np.zeros((N_BINS, BLOCK_PAIRS, UNITS_PER_GROUP), dtype=np.float32)
    for slot in range(BLOCK_PAIRS):
        a[np.arange(N_BINS), slot, layout.unit[slot] % UNITS_PER_GROUP] = layout.sign[slot]
    return np.ascontiguousarray(a[:, :, domain.first:domain.first + domain.count].reshape(N_BINS, -1))


def _pair_features(xd: np.ndarray, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Band magnitudes of consecutive frames of the decimated signal starting at ``offset``
    (decimated samples): (difference, sum), each (frames-1, N_BINS). The 512-point window at
    11.025 kHz has the same length and bin spacing as the embedder's 2048 points at 44.1 kHz."""
    frames = np.lib.stride_tricks.sliding_window_view(xd[offset:], N_FFT // DECIMATE)[::HOP // DECIMATE]
    mag = np.abs(sfft.rfft(frames * _WINDOW_D, axis=-1, workers=1)[:, BIN_LO:BIN_HI + 1])
    return mag[1:] - mag[:-1], mag[1:] + mag[:-1]


@dataclass(frozen=True)
class _Best:
    statistic: float
    units: int  # distinct unit labels seen (the independent terms under no mark)
    offset: int
    votes: np.ndarray  # (WORD_BITS,)


def _label_votes(phis: np.ndarray, local: np.ndarray, layout: _Layout) -> tuple[np.ndarray, np.ndarray]:
    """Bit votes from the phases of unit occurrences (lead dims..., occurrences), labels ``local``.

    The occurrences of one unit label (the block repeats) share a dither, so without a
    mark they are not independent: each label contributes once, the cosine of the circular
    mean of its occurrences' phases (uniform without a mark, since its dither is).
    Returns votes (lead..., WORD_BITS) and the number of labels present (lead...)."""
    lead = phis.shape[:-1]
    n = int(np.prod(lead)) if lead else 1
    labels = layout.units
    index = (np.arange(n).reshape((*lead, 1)) * labels + np.broadcast_to(local, phis.shape)).ravel()
    c = np.bincount(index, weights=np.cos(phis).ravel(), minlength=n * labels).reshape(n, labels)
    s = np.bincount(index, weights=np.sin(phis).ravel(), minlength=n * labels).reshape(n, labels)
    norm = np.hypot(c, s)
    present = norm > 0
    votes = np.where(present, c / np.where(present, norm, 1.0), 0.0) @ np.eye(WORD_BITS)[layout.bit_of_unit]
    return votes.reshape((*lead, WORD_BITS)), present.sum(axis=1).reshape(lead)


def _phases(proj: np.ndarray, scales: np.ndarray, local: np.ndarray, layout: _Layout) -> np.ndarray:
    """phi = 2 pi (p / c - dither) / delta for every contrast scale c: (..., scales, units)."""
    phis: np.ndarray = 2 * np.pi * (proj[..., None, :] / scales[:, None] - layout.dither[local][..., None, :]) \
        / layout.delta[local][..., None, :]
    return phis


def _search(feats: tuple[np.ndarray, np.ndarray], layout: _Layout, a: np.ndarray, offset: int,
            domain: _Domain) -> _Best:
    """Best cyclic block alignment and contrast scale of the pair features (frames-1, N_BINS)
    starting at decimated sample ``offset``, by the decision statistic T: all shifts at once.

    Frame ``first + 2r`` (first in 0/1, r < BLOCK_PAIRS) is tried as a block start; pair i
    (frames first+2i, first+2i+1) then sits in slot (i - r) mod BLOCK_PAIRS, and a unit's
    group is two consecutive slots starting at an even one."""
    diff, total = feats[0].astype(np.float32), feats[1].astype(np.float32)
    rows, k = len(diff), domain.count
    q = np.stack([(diff @ a).reshape(rows, BLOCK_PAIRS, k), (total @ np.abs(a)).reshape(rows, BLOCK_PAIRS, k)],
                 axis=-1)
    best: _Best | None = None
    for first in (0, 1):
        v = q[first::2]
        pairs = len(v)
        for parity in (0, 1):
            r = np.arange(parity, BLOCK_PAIRS, 2)
            starts = np.arange(parity, pairs - 1, 2)  # pairs that open a group for these r
            if len(starts) == 0:
                continue
            slot = (starts[None, :] - r[:, None]) % BLOCK_PAIRS  # (r, groups): the group's first slot
            sums = v[starts[None, :], slot] + v[starts[None, :] + 1, slot + 1]  # (r, groups, k, 2)
            group = slot // 2
            local = (group[:, :, None] * UNITS_PER_GROUP + domain.first + np.arange(k)).reshape(len(r), -1)
            proj = (sums[..., 0] / (sums[..., 1] + 1e-12)).reshape(len(r), -1)
            phis = _phases(proj, domain.coarse_scales, local, layout)  # (r, scale, units)
            # Pick the alignment by a cheap proxy (votes over every occurrence), then score it
            # with the decision statistic (one term per label). Any selection rule is covered by
            # the threshold's union over all hypotheses.
            n_r, n_c = phis.shape[:2]
            index = ((np.arange(n_r)[:, None, None] * n_c + np.arange(n_c)[None, :, None]) * WORD_BITS
                     + layout.bit_of_unit[local][:, None, :])
            proxy = np.bincount(index.ravel(), weights=np.cos(phis).ravel(), minlength=n_r * n_c * WORD_BITS)
            ri, ci = np.unravel_index(int(np.argmax(np.abs(proxy.reshape(n_r, n_c, WORD_BITS)).sum(axis=-1))),
                                      (n_r, n_c))
            votes, present = _label_votes(phis[ri, ci], local[ri], layout)
            stat = float(np.abs(votes).sum())
            if best is None or stat > best.statistic:
                start = (offset + (first + 2 * int(r[ri])) * (HOP // DECIMATE)) * DECIMATE
                best = _Best(stat, int(present), start, votes)
    if best is None:
        raise AudioError("audio too short to analyse")
    return best


def _score_alignment(feats: tuple[np.ndarray, np.ndarray], layout: _Layout, offset: int,
                     start_frame: int, domain: _Domain) -> _Best | None:
    """T at one block alignment (frame ``start_frame`` of the features opens a block),
    best contrast scale; cheap, for the fine sync search."""
    diff, total = feats
    first, r = start_frame % 2, start_frame // 2
    rows = np.arange(first, len(diff), 2)
    i = np.arange(len(rows))
    opens = i[(i - r) % 2 == 0]
    opens = opens[opens + 1 < len(rows)]
    if len(opens) == 0:
        return None
    used = np.stack([opens, opens + 1], axis=1).ravel()  # pair indices, two per group instance
    slot = (used - r) % BLOCK_PAIRS
    instance = np.repeat(np.arange(len(opens)), 2)
    k = layout.unit[slot] % UNITS_PER_GROUP - domain.first
    inside = (k >= 0) & (k < domain.count)  # cells of this domain's units
    labels = (instance[:, None] * domain.count + np.where(inside, k, 0)).ravel()
    n = len(opens) * domain.count
    num = np.bincount(labels, weights=(diff[rows[used]] * layout.sign[slot] * inside).ravel(), minlength=n)
    den = np.bincount(labels, weights=(total[rows[used]] * inside).ravel(), minlength=n) + 1e-12
    group = slot[0::2] // 2
    local = (group[:, None] * UNITS_PER_GROUP + domain.first + np.arange(domain.count)).ravel()
    phis = _phases(num / den, domain.scales, local, layout)
    votes, present = _label_votes(phis, local[None, :], layout)
    stats = np.abs(votes).sum(axis=1)
    c = int(np.argmax(stats))
    start = (offset + start_frame * (HOP // DECIMATE)) * DECIMATE
    return _Best(float(stats[c]), int(present[c]), start, votes[c])


def clipped_share(audio: np.ndarray) -> float:
    """The largest share of a channel's samples sitting at that channel's peak (hard clipping)."""
    x = np.asarray(audio)
    share = 0.0
    for channel in (x,) if x.ndim == 1 else x.T:
        magnitude = np.abs(channel)
        peak = magnitude.max(initial=0.0)
        if peak > 0:
            share = max(share, np.count_nonzero(magnitude >= peak * (1 - 1e-4)) / len(magnitude))
    return share


def detect(audio: np.ndarray, sample_rate: int, keys: list[Key], fpr: float = DESIGN_FPR) -> Detection:
    """Blind detection over every key, sub-hop offset, cyclic block shift and contrast scale.

    Runs on the mono mix decimated to 11.025 kHz (the band ends at 5 kHz). Coarse search on
    a grid of HOP / SUBHOP_STEPS samples, then a fine search of +-half a coarse step around
    the best coarse offset of each key. Offsets are reported in 44.1 kHz samples. Hard-clipped
    audio (CLIPPED_MIN of a channel at its peak) is also read in the clip domain, by the
    clip units; those hypotheses join the false-positive budget."""
    paths = _paths(audio, sample_rate)
    hypotheses = _hypotheses(len(keys), paths)
    result: Detection | None = None
    for domain, signal in paths:
        det = _detect_domain(signal, keys, domain, fpr, hypotheses)
        if result is None or det.score > result.score:
            result = det
    assert result is not None
    return result


def _paths(audio: np.ndarray, sample_rate: int) -> list[tuple[_Domain, np.ndarray]]:
    """The signals the mark is read in: the decimated mono mix, and the clip domain of hard-clipped
    audio (CLIPPED_MIN of a channel at its peak). Raises AudioError for audio too short or silent."""
    rate = SAMPLE_RATE // DECIMATE
    xd = to_mono(audio, sample_rate, rate)
    hop, n_fft = HOP // DECIMATE, N_FFT // DECIMATE
    if len(xd) < (BLOCK_FRAMES // 2 + 2) * hop + n_fft:
        need = ((BLOCK_FRAMES // 2 + 2) * hop + n_fft) / rate
        raise AudioError(f"audio too short: need at least {need:.1f} s")
    if not np.any(xd):
        raise AudioError("audio is silent")
    paths = [(LINEAR, xd)]
    if clipped_share(audio) >= CLIPPED_MIN:
        channels = np.asarray(audio, dtype=np.float64).reshape(len(audio), -1)
        paths.append((CLIP, to_mono(clip_domain(list(channels.T)), sample_rate, rate)))
    return paths


def _hypotheses(keys: int, paths: list[tuple[_Domain, np.ndarray]]) -> int:
    """What the blind detector tries: every key, sub-hop offset, block shift and contrast scale."""
    return keys * (SUBHOP_STEPS + FINE_STEPS) * BLOCK_FRAMES * sum(len(d.scales) for d, _ in paths)


def verify(audio: np.ndarray, sample_rate: int, key: Key, ring_size: int = 1, fpr: float = DESIGN_FPR) -> Detection:
    """Decode audio that ``embed`` has just marked, at the alignment it used (the first frame opens a
    block; no sync search), and decide with the *blind* detector's threshold and union bound, so a
    segment verifies only if ``detect`` would need no luck to find it (``ring_size``: how many keys the
    public detector tries, which its threshold accounts for). A fraction of ``detect``'s cost: the
    watermark service checks every segment it marks this way."""
    paths = _paths(audio, sample_rate)
    hypotheses = _hypotheses(ring_size, paths)
    layout = _layout(key.secret)
    result: Detection | None = None
    for domain, signal in paths:
        best = _score_alignment(_pair_features(signal, 0), layout, 0, 0, domain)
        if best is None:
            raise AudioError("audio too short to analyse")
        det = _decide(best, layout, key, fpr, hypotheses, domain)
        if result is None or det.score > result.score:
            result = det
    assert result is not None
    return result


def _detect_domain(xd: np.ndarray, keys: list[Key], domain: _Domain, fpr: float, hypotheses: int) -> Detection:
    hop = HOP // DECIMATE
    coarse = hop // SUBHOP_STEPS
    fine = coarse // FINE_STEPS
    feats = {off: _pair_features(xd, off) for off in range(0, hop, coarse)}
    result: Detection | None = None
    for key in keys:
        layout = _layout(key.secret)
        a = _unit_matrix(key.secret, domain)
        best = max((_search(d, layout, a, off, domain) for off, d in feats.items()), key=lambda b: b.statistic)
        base = best.offset // DECIMATE % hop
        start_frame = (best.offset // DECIMATE - base) // hop
        for off in range(base - coarse // 2, base + coarse // 2 + 1, fine):
            if off % coarse == 0 or off < 0:
                continue
            cand = _score_alignment(_pair_features(xd, off), layout, off, start_frame, domain)
            if cand is not None and cand.statistic > best.statistic:
                best = cand
        det = _decide(best, layout, key, fpr, hypotheses, domain)
        if result is None or det.score > result.score:
            result = det
    assert result is not None
    return result


def _chase_decode(key: Key, votes: np.ndarray) -> tuple[np.ndarray, int | None]:
    """Hard decision, then every flip pattern of the CHASE_BITS least reliable bits until the
    CRC matches (Chase-2 decoding). Each pattern is one more CRC trial in the FP budget."""
    hard = (votes < 0).astype(np.int64)
    weak = np.argsort(np.abs(votes))[:CHASE_BITS]
    for pattern in range(1 << CHASE_BITS):
        bits = hard.copy()
        for j, position in enumerate(weak):
            if pattern >> j & 1:
                bits[position] ^= 1
        payload = _check_word(key, bits)
        if payload is not None:
            return bits, payload
    return hard, None


def _decide(best: _Best, layout: _Layout, key: Key, fpr: float, hypotheses: int, domain: _Domain) -> Detection:
    m, votes = best.units, best.votes
    bits, payload = _chase_decode(key, votes)
    t = float(np.sum(votes * (1 - 2 * bits)))  # correlation with the decoded codeword (bit 0 -> +1)
    thr = threshold(m, hypotheses, fpr)
    detected = t >= thr and payload is not None
    conf = 1.0 - min(1.0, hypotheses * math.exp(log_tail_bound(t, m)) * 2.0 ** PAYLOAD_BITS)
    return Detection(detected, key.key_id if detected else None, payload if detected else None,
                     t / thr, t, m, best.offset, bits, conf, domain.name)

"""The telemetry -> music policy. Pure: no clock, no I/O; times are passed in (ms).

Two layers:

1. ``body_update`` folds a telemetry sample into the listener's body state, in event
   time: a sample older than the newest one applied is ignored (late or out of order
   data never rewinds state). Each signal keeps its previous raw reading: two consecutive
   readings that agree (cadence within 8%, heart rate within 6%, at most 10 s apart) on a
   level away from the estimate are a *confirmed* change and the estimate moves there at
   once (their mean); a lone jump of more than 35 bpm / 40 spm within 5 s of the last
   accepted reading is a glitch until the next reading confirms it; anything else is
   smoothed (exponential, alpha 0.35). A device saying RESTING or SLEEPING with no cadence
   reads as cadence 0: a runner who stops is a cadence collapse, confirmed like any change.
2. ``target`` maps the body to musical parameters, and ``advance`` moves the playing
   parameters toward it with hysteresis.

Numbers and why:
- Cadence is a strong, low-noise signal (a watch counts steps; a steady runner's cadence
  varies by 2-3% between reports), heart rate is not (optical sensors glitch and lag the
  effort by tens of seconds). So a wish that follows a *confirmed* cadence reading (two
  agreeing readings, about one report interval) applies at once; any other wish must hold
  for HOLD_MS (4 s, about one watch report interval plus one) first. "Held" means the wish
  stayed on the same side of the playing tempo (or stayed the same wish): a steadily rising
  cadence is one sustained wish to go faster, and the ramp follows it. A runner stopping is
  a confirmed cadence collapse, so it is among the fastest responses.
- Tempo changes up to ~3% go unnoticed, ~4% are noticed (Van Dyck et al. 2015). A small
  wish (within DEAD_BAND, 3%) is ignored; drift toward a nearby target moves at most
  MAX_RAMP (3%) per bar, below the noticeable threshold. A change of state (the target
  more than LARGE_CHANGE, 6%, away: starting or stopping a run) should be heard, and
  soon: it moves up to BIG_RAMP_PER_S (15%) per second of music, so a bar of any length
  carries the same rate of change (about 22% per bar near 170 BPM; at most MAX_BIG_STEP,
  35%, in one bar, which caps the long bars below ~112 BPM; a 2-bar segment, above 110 BPM
  or where a ramp leaves the 1-bar range, takes two bars' steps), and eases into the last 6%
  at 3% per bar. That is far beyond a turntable's pitch range (Technics SL-1200 +-8%, for
  moves a dancer still hears as the same track) on purpose: a runner who starts or stops
  should hear the music change with them within a few seconds (issue #16's goal: within 3%
  of the new tempo 15 s after the change, and rest 70 -> run 170 is a factor of 2.4), the way
  a DJ cuts to a new track on a phrase boundary rather than pitching one up. We generate the
  music, so each step is new music written at its tempo, not a stretched one. The earlier
  5%/s (12% a bar) took ~25 s from rest to a run, measured from the played audio; 10%/s and
  25% a bar, with glides heard beat by beat (below), 16.7 s at p95 in ``make bench-adapt``
  (docs/soundtrack.md), so the rate went up to 15%/s and 35% a bar.
- Glides: a segment continuing another glides beat by beat from the tempo that one ended at
  to its own (``kit.tempo``; the scheduler asks for it), so each bar's allowance is spread
  over its four beats: the fast ramp moves ~5% a beat near 170 BPM and up to ~8% at the
  slowest bars, the gentle one 0.75%. A change of state is heard as an accelerando (or a
  slowing) within seconds rather than as a jump at every segment boundary: what adaptive
  players get by time-stretching continuously (D-Jogger, RockMyRun), written at the tempo
  instead of stretched; drifts stay below what is noticed (~3-4% a step, Van Dyck et al. 2015).
- Match mode: moving with cadence >= 100 spm -> tempo = cadence (one beat per step),
  halved above 180 (half-time), clamped to 60-200 BPM. Exercising without cadence ->
  tempo from heart-rate reserve, 95 + 45 x HRR, topping out at 140: preferred music tempo
  during exercise plateaus around 123-140 BPM (Karageorghis et al.). At rest -> calm
  (70 BPM, low energy); a device saying RESTING or SLEEPING is at rest whatever the heart
  rate, so a runner who stops hears the music calm down, not follow a heart rate still high
  from the run up toward 140.
- Guide mode: the target zone's tempo (warm-up 110, steady 128, cool-down 80, sleep
  60); the ramp takes the listener there gently, never faster than 3% per bar.
- Mood (mode) changes need the new mood to be wanted for MOOD_AGREE_MS (8 s) and at
  least MOOD_DWELL_MS (30 s) since the last mood change.
- No telemetry for HOLD_MISSING_MS (15 s): hold; after that drift toward a neutral
  setting (90 BPM, energy 0.4) through the same ramp.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

TEMPO_MIN, TEMPO_MAX = 60.0, 200.0
DEAD_BAND = 0.03
MAX_RAMP = 0.03
BIG_RAMP_PER_S = 0.15
MAX_BIG_STEP = 0.35
LARGE_CHANGE = 0.06
HOLD_MS = 4_000
MOOD_AGREE_MS = 8_000
MOOD_DWELL_MS = 30_000
HOLD_MISSING_MS = 15_000
SMOOTHING = 0.35
HR_JUMP, CADENCE_JUMP, JUMP_WINDOW_MS = 35.0, 40.0, 5_000
HR_AGREE, CADENCE_AGREE, AGREE_WINDOW_MS = 0.06, 0.08, 10_000  # two readings this close confirm a level
STILL = {"RESTING", "SLEEPING"}
HR_REST, HR_MAX = 60.0, 190.0
MOVING_CADENCE = 100.0
NEUTRAL_TEMPO, NEUTRAL_ENERGY = 90.0, 0.4
GUIDE_TEMPO = {"WARM_UP": 110.0, "STEADY": 128.0, "COOL_DOWN": 80.0, "SLEEP": 60.0}
GUIDE_ENERGY = {"WARM_UP": 0.5, "STEADY": 0.7, "COOL_DOWN": 0.25, "SLEEP": 0.05}
EXERCISE = {"RUNNING", "CYCLING", "WORKOUT", "WALKING"}


@dataclass(frozen=True)
class Body:
    """What we believe about the listener's body, in event time."""

    heart_rate: float | None = None
    cadence: float | None = None
    activity: str = "UNKNOWN"
    session_mode: str = "MATCH"
    guide_target: str = "NONE"
    last_event_ms: int = -1
    last_hr_ms: int = -1
    last_cadence_ms: int = -1
    rejected: int = 0
    hr_reading: float | None = None  # the previous raw readings, and when
    hr_reading_ms: int = -1
    cadence_reading: float | None = None
    cadence_reading_ms: int = -1
    cadence_confirmed: bool = False  # the newest cadence reading agreed with the one before it
    cadence_changed_ms: int = -1  # when two agreeing readings last moved the cadence to a new level


@dataclass(frozen=True)
class Music:
    tempo_bpm: float
    energy: float
    mode: str  # MAJOR / MINOR
    reason: str
    confident: bool = False  # follows a confirmed cadence reading: applies without the hold


@dataclass(frozen=True)
class Playing:
    """The parameters being played, and the hysteresis bookkeeping."""

    music: Music
    pending: Music | None = None
    pending_since_ms: int = -1
    mood_since_ms: int = 0
    # The direction of a change under way (+1 up, -1 down, 0 none; older states stored a bool): it runs
    # on while the wish stays that way, dead band or not, so a moving target is followed to its end.
    ramping: int = 0
    mood_wish_since_ms: int = -1  # since when the wished mood has been the same


def _smooth(old: float | None, new: float) -> float:
    return new if old is None else old + SMOOTHING * (new - old)


@dataclass(frozen=True)
class _Signal:
    estimate: float | None
    estimate_ms: int
    reading: float | None
    reading_ms: int
    confirmed: bool = False
    rejected: bool = False
    changed_ms: int = -1


def _fold(signal: _Signal, value: float, event_ms: int, jump: float, agree: float) -> _Signal:
    """One reading of a signal: a confirmed change, a glitch, or smoothing (see the module docstring)."""
    estimate, estimate_ms, before = signal.estimate, signal.estimate_ms, signal.reading
    agrees = (before is not None and event_ms - signal.reading_ms <= AGREE_WINDOW_MS
              and abs(value - before) <= agree * max(value, before, 1.0))
    moved = estimate is None or abs(value - estimate) > agree * max(value, estimate, 1.0)
    if before is not None and agrees and moved:
        return _Signal((value + before) / 2, event_ms, value, event_ms, confirmed=True, changed_ms=event_ms)
    if estimate is not None and abs(value - estimate) > jump and event_ms - estimate_ms < JUMP_WINDOW_MS:
        return _Signal(estimate, estimate_ms, value, event_ms, rejected=True, changed_ms=signal.changed_ms)
    return _Signal(_smooth(estimate, value), event_ms, value, event_ms, confirmed=agrees, changed_ms=signal.changed_ms)


def body_update(body: Body, event_ms: int, heart_rate: int | None, cadence: int | None, activity: str,
                session_mode: str, guide_target: str) -> Body:
    """Fold one sample into the body state; older samples than the newest applied are ignored."""
    if event_ms <= body.last_event_ms:
        return body
    rejected = body.rejected
    hr = _Signal(body.heart_rate, body.last_hr_ms, body.hr_reading, body.hr_reading_ms)
    if heart_rate is not None:
        hr = _fold(hr, heart_rate, event_ms, HR_JUMP, HR_AGREE)
        rejected += hr.rejected
    if cadence is None and activity in STILL:
        cadence = 0  # the device says the listener stopped: no steps
    cad = _Signal(body.cadence, body.last_cadence_ms, body.cadence_reading, body.cadence_reading_ms,
                  body.cadence_confirmed, changed_ms=body.cadence_changed_ms)
    if cadence is not None:
        cad = _fold(cad, cadence, event_ms, CADENCE_JUMP, CADENCE_AGREE)
        rejected += cad.rejected
    return Body(hr.estimate, cad.estimate, activity, session_mode, guide_target, event_ms, hr.estimate_ms,
                cad.estimate_ms, rejected, hr.reading, hr.reading_ms, cad.reading, cad.reading_ms, cad.confirmed,
                cad.changed_ms)


def clamp_tempo(tempo: float) -> float:
    return max(TEMPO_MIN, min(TEMPO_MAX, tempo))


def heart_rate_reserve(heart_rate: float) -> float:
    return max(0.0, min(1.0, (heart_rate - HR_REST) / (HR_MAX - HR_REST)))


def target(body: Body, now_ms: int) -> Music:
    """What the body asks for now (before hysteresis)."""
    if body.last_event_ms < 0 or now_ms - body.last_event_ms > HOLD_MISSING_MS:
        return Music(NEUTRAL_TEMPO, NEUTRAL_ENERGY, "MAJOR", "no_telemetry:neutral")
    if body.session_mode == "GUIDE" and body.guide_target in GUIDE_TEMPO:
        zone = body.guide_target
        return Music(GUIDE_TEMPO[zone], GUIDE_ENERGY[zone], "MAJOR", f"guide:{zone.lower()}")
    cadence_fresh = body.cadence is not None and now_ms - body.last_cadence_ms <= HOLD_MISSING_MS
    # A wish is confident when two agreeing cadence readings say so: any cadence-led wish, and the wish
    # right after a confirmed change of cadence level (a stop); heart-rate wishes later keep the hold.
    confident = cadence_fresh and body.cadence_confirmed
    just_changed = confident and now_ms - body.cadence_changed_ms <= HOLD_MS
    if cadence_fresh and body.cadence is not None and body.cadence >= MOVING_CADENCE:
        tempo = body.cadence / 2 if body.cadence > 180 else body.cadence
        energy = min(1.0, 0.45 + (body.cadence - MOVING_CADENCE) / 160)
        return Music(clamp_tempo(tempo), energy, "MINOR" if energy >= 0.85 else "MAJOR", "match:cadence", confident)
    hr_fresh = body.heart_rate is not None and now_ms - body.last_hr_ms <= HOLD_MISSING_MS
    if hr_fresh and body.heart_rate is not None:
        reserve = heart_rate_reserve(body.heart_rate)
        if body.activity not in STILL and (body.activity in EXERCISE or reserve >= 0.3):
            energy = 0.3 + 0.65 * reserve
            return Music(clamp_tempo(95 + 45 * reserve), energy, "MINOR" if energy >= 0.85 else "MAJOR",
                         "match:heart_rate_reserve", just_changed)
    return Music(70.0, 0.2, "MAJOR", "match:rest", just_changed)


def advance(playing: Playing, wanted: Music, now_ms: int, bars: int = 1) -> Playing:
    """Parameters for the next ``bars`` bars: hold, dead band, ramp (per bar) and mood dwell applied."""
    current = playing.music
    tempo = current.tempo_bpm
    # A tempo change must be wanted for HOLD_MS before it applies: the wish stays on the same
    # side of the playing tempo (beyond the dead band), or stays the same wish. A steadily
    # rising cadence is one sustained wish to go faster, not a new wish every sample. Mood
    # keeps its own agreement clock.
    previous = playing.pending
    side = _side(wanted, tempo)
    sustained = previous is not None and ((side != 0 and side == _side(previous, tempo)) or _close(previous, wanted))
    pending, since = wanted, (playing.pending_since_ms if sustained else now_ms)
    same_mood = previous is not None and previous.mode == wanted.mode
    mood_wish_since = playing.mood_wish_since_ms if same_mood else now_ms
    held = wanted.confident or now_ms - since >= HOLD_MS
    goal = clamp_tempo(wanted.tempo_bpm)
    direction = (goal > tempo) - (goal < tempo)
    continuing = held and direction != 0 and direction == playing.ramping
    ramping = 0
    if continuing or (held and abs(wanted.tempo_bpm - tempo) > DEAD_BAND * tempo):
        # Only the body's own changes of state move fast; a guide zone or the neutral drift stays gentle.
        tempo = clamp_tempo(ramp(tempo, goal, bars, fast=wanted.reason.startswith("match:")))
        ramping = direction
    energy = current.energy
    if held:
        energy = energy + max(-0.1 * bars, min(0.1 * bars, wanted.energy - energy))  # at most 0.1 per bar
    mode, mood_since = current.mode, playing.mood_since_ms
    if (wanted.mode != mode and now_ms - mood_wish_since >= MOOD_AGREE_MS
            and now_ms - playing.mood_since_ms >= MOOD_DWELL_MS):
        mode, mood_since = wanted.mode, now_ms
    music = Music(tempo, round(energy, 3), mode, wanted.reason if held else current.reason)
    return replace(playing, music=music, pending=pending, pending_since_ms=since, mood_since_ms=mood_since,
                   ramping=ramping, mood_wish_since_ms=mood_wish_since)


def big_step(tempo: float) -> float:
    """The largest relative change of one bar at ``tempo`` for a change of state: BIG_RAMP_PER_S for
    each second the bar lasts, at most MAX_BIG_STEP (a slow bar is long, and one step should not be)."""
    return float(min(MAX_BIG_STEP, (1 + BIG_RAMP_PER_S) ** (240.0 / tempo) - 1))


def ramp(tempo: float, goal: float, bars: int, fast: bool) -> float:
    """The tempo after ``bars`` bars toward ``goal``: with ``fast``, ``big_step`` per bar while the goal
    is more than LARGE_CHANGE away; otherwise (and for the last 6%) MAX_RAMP per bar; never past it."""
    for _ in range(bars):
        if tempo == goal:
            break
        rate = big_step(tempo) if fast and abs(goal - tempo) > LARGE_CHANGE * tempo else MAX_RAMP
        step = tempo * rate if goal > tempo else -tempo * rate
        tempo = min(goal, tempo + step) if goal > tempo else max(goal, tempo + step)
    return tempo


def _side(wish: Music, tempo: float) -> int:
    """-1 / +1 when the wish is below / above the tempo by more than the dead band, else 0."""
    gap = wish.tempo_bpm - tempo
    return 0 if abs(gap) <= DEAD_BAND * tempo else (1 if gap > 0 else -1)


def _close(a: Music, b: Music) -> bool:
    """Two targets are 'the same wish' for tempo when they are within the dead band."""
    return abs(a.tempo_bpm - b.tempo_bpm) <= DEAD_BAND * a.tempo_bpm

"""The music engine: request parameters in, a rendered, attributed segment out.

Generation continues the session: the previous segment's ``Context`` — its last melody
tokens (the model's context), its last chord and its ringing tail (mixed into the new
segment's start) — is passed in with the job, and every segment returns its own. The
engine keeps no state between calls: same parameters, seed and context, same audio. The
inference service keeps contexts durably (the generation log), so a replay after a crash
continues exactly where the first run did.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from inference import form
from inference.form import Theme
from inference.harmony import Harmony
from inference.memorization import CopyGuard
from inference.model import MelodyModel, sample_batch
from inference.music import (
    BOS,
    MAJOR,
    MINOR,
    STEPS_PER_BAR,
    Note,
    energy_token,
    harmonize,
    notes_to_tokens,
    tokens_to_notes,
)
from inference.provenance import influences
from inference.render import SAMPLE_RATE, Rendered, arrange, energy_of, finish, synthesize
from inference.train import MODEL_DIR

CONTEXT_TOKENS = 48
COPY_RESAMPLES = 8  # a melody copying a training work is sampled again up to this often


@dataclass(frozen=True)
class Params:
    tempo_bpm: float
    energy: float
    mode: str
    key_tonic: int
    bars: int
    tempo_from_bpm: float | None = None  # the beats glide from this tempo to tempo_bpm (kit.tempo)

    def __post_init__(self) -> None:
        if not 40 <= self.tempo_bpm <= 240:
            raise ValueError(f"tempo_bpm {self.tempo_bpm} outside 40-240")
        if self.tempo_from_bpm is not None and not 40 <= self.tempo_from_bpm <= 240:
            raise ValueError(f"tempo_from_bpm {self.tempo_from_bpm} outside 40-240")
        if not 0 <= self.energy <= 1:
            raise ValueError(f"energy {self.energy} outside 0-1")
        if self.mode not in ("MAJOR", "MINOR"):
            raise ValueError(f"mode {self.mode!r} is not MAJOR or MINOR")
        if not 0 <= self.key_tonic <= 11:
            raise ValueError(f"key_tonic {self.key_tonic} outside 0-11")
        if not 1 <= self.bars <= 32:
            raise ValueError(f"bars {self.bars} outside 1-32")


@dataclass(frozen=True)
class Context:
    """What the next segment of a session continues from."""

    tokens: tuple[int, ...]  # the last CONTEXT_TOKENS melody tokens
    tail: np.ndarray  # float32 (samples, 2): what rings on past the segment's end
    degree: int  # the last chord
    lufs: float | None = None  # the level it ended at (None: logged before levels followed energy)
    bar: int = 0  # the session bar the next segment starts at (inference.form)
    theme: Theme | None = None  # the melody of the form cycle's first A so far
    phrase: tuple[tuple[int, int, int], ...] = ()  # (start from its phrase's first bar line, length, rel):
    # the notes of ``bar``'s phrase before ``bar`` (attribution reads the phrase so far)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        extra: dict[str, np.ndarray] = {"bar": np.asarray(self.bar, dtype=np.int64),
                                        "phrase": np.asarray(self.phrase, dtype=np.int32).reshape(-1, 3)}
        if self.lufs is not None:
            extra["lufs"] = np.asarray(self.lufs, dtype=np.float64)
        if self.theme is not None:
            extra["theme_notes"] = np.asarray(self.theme.notes, dtype=np.int32).reshape(-1, 3)
            extra["theme_key"] = np.asarray([self.theme.mode == "MAJOR", self.theme.energy], dtype=np.int32)
        np.savez(buffer, tokens=np.asarray(self.tokens, dtype=np.int32), tail=self.tail.astype(np.float32),
                 degree=np.asarray(self.degree, dtype=np.int32), **extra)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Context:
        """A logged context (one logged before levels, the form or phrase attribution has none)."""
        with np.load(io.BytesIO(data), allow_pickle=False) as saved:
            theme = None
            if "theme_key" in saved.files:
                major, energy = (int(x) for x in saved["theme_key"])
                theme = Theme("MAJOR" if major else "MINOR", energy,
                              tuple((int(a), int(b), int(c)) for a, b, c in saved["theme_notes"]))
            phrase = tuple((int(a), int(b), int(c)) for a, b, c in saved["phrase"]) if "phrase" in saved.files else ()
            return cls(tuple(int(t) for t in saved["tokens"]), saved["tail"].astype(np.float32),
                       int(saved["degree"]), float(saved["lufs"]) if "lufs" in saved.files else None,
                       int(saved["bar"]) if "bar" in saved.files else 0, theme, phrase)


@dataclass(frozen=True)
class Segment:
    rendered: Rendered
    tokens: list[int]
    influences: list[tuple[str, int]]
    degrees: list[int]
    bar: int = 0  # the session bar after it
    theme: Theme | None = None
    copy_resamples: int = 0  # how often its melody was sampled again for copying a training work
    before: tuple[int, ...] = ()  # the context's tokens it continued (the melody before it)
    phrase: tuple[tuple[int, int, int], ...] = ()  # the next segment's phrase so far (Context.phrase)

    @property
    def duration_ms(self) -> int:
        return round(len(self.rendered.audio) * 1000 / SAMPLE_RATE)

    @property
    def context(self) -> Context:
        # the melody so far, across segments: a 1-bar segment alone is too short a context for the model,
        # and the copy guard reads on from it (two bars and more)
        return Context((self.before + tuple(self.tokens))[-CONTEXT_TOKENS:], self.rendered.tail, self.degrees[-1],
                       self.rendered.lufs, self.bar, self.theme, self.phrase)


class Engine:
    def __init__(self, model_dir: Path = MODEL_DIR) -> None:
        checkpoint = torch.load(model_dir / "weights.pt", map_location="cpu", weights_only=True)
        self.model = MelodyModel(**checkpoint["config"])
        self.model.load_state_dict(checkpoint["state"])
        self.model.eval()
        manifest = json.loads((model_dir / "training_manifest.json").read_text())
        self.trained_works = frozenset(w["work_id"] for w in manifest["works"])  # trained and held out
        taught = self.trained_works - set(manifest["held_out_works"])
        # Attribution covers only works the model was trained on, whatever profiles.json holds.
        self.profiles = {work: grams for work, grams in json.loads((model_dir / "profiles.json").read_text()).items()
                         if work in taught}
        version = json.loads((model_dir / "version.json").read_text())
        self.model_id, self.model_version = version["model_id"], version["model_version"]
        guard = model_dir / "copy_guard.json"  # versions trained before the guard have none
        self.guard = CopyGuard.from_melodies(json.loads(guard.read_text())) if guard.exists() else None
        labels = model_dir / "conditioning.json"  # older versions: attribution over every work
        self.conditioning = ({work: tuple(tokens) for work, tokens in json.loads(labels.read_text()).items()}
                             if labels.exists() else None)
        learned = model_dir / "harmony.json"  # without it (older versions) the rule harmonises
        self.harmony = Harmony(json.loads(learned.read_text())) if learned.exists() else None
        self.manifest_sha256 = version["training_manifest_sha256"]

    def generate(self, params: Params, seed: int, context: Context | None = None,
                 allowed_works: set[str] | None = None) -> Segment:
        """Render one segment. ``allowed_works``: works with generation consent (default all)."""
        return self.generate_batch([Job(params, seed, context)], allowed_works)[0]

    def generate_batch(self, jobs: list[Job], allowed_works: set[str] | None = None) -> list[Segment]:
        """Render several segments; their melodies are sampled together (one batched model
        step per token), each with its own seed, so results equal one-at-a-time generation.
        A melody that copies more than two bars of a training work (``memorization``) is sampled
        again from seeds derived from the job's, up to COPY_RESAMPLES times."""
        contexts = [job.context for job in jobs]
        prefixes = []
        for job, context in zip(jobs, contexts, strict=True):
            prefix = [BOS, MAJOR if job.params.mode == "MAJOR" else MINOR, energy_token(job.params.energy)]
            prefixes.append(prefix + (list(context.tokens[-CONTEXT_TOKENS:]) if context is not None else []))
        melodies = self._sample(jobs, prefixes, [job.seed for job in jobs])
        allowed = set(self.profiles) if allowed_works is None else allowed_works & set(self.profiles)
        segments = []
        for job, context, prefix, tokens in zip(jobs, contexts, prefixes, melodies, strict=True):
            params = job.params
            bar = context.bar if context is not None else 0
            notes, theme, tokens = self._heard(job, context, tokens)
            resampled = 0
            while self.guard is not None and resampled < COPY_RESAMPLES and self.guard.copies(
                    *_after(context, notes)):
                resampled += 1
                (tokens,) = self._sample([job], [prefix], [job.seed * 1_000_003 + resampled])
                notes, theme, tokens = self._heard(job, context, tokens)
            cadences = {2 * k + 1: c for k in range(params.bars) if (c := form.cadence(bar + k)) is not None}
            previous = context.degree if context else 0
            degrees = (self.harmony.choose(notes, params.mode, params.bars, previous, cadences) if self.harmony
                       else harmonize(notes, params.mode, params.bars, previous, cadences))
            events = arrange(notes, degrees, params.mode, params.key_tonic, params.energy, params.bars,
                             np.random.default_rng(job.seed),
                             fills=frozenset(k for k in range(params.bars) if form.ends_section(bar + k)),
                             downbeats=frozenset(k for k in range(params.bars)
                                                 if bar + k > 0 and form.ends_section(bar + k - 1)),
                             previous=energy_of(context.lufs) if context is not None and context.lufs is not None
                             else None)
            raw, length = synthesize(events, params.tempo_bpm, params.bars, params.energy, params.tempo_from_bpm)
            rendered = finish(raw, length, context.tail if context is not None else None, params.energy,
                              context.lufs if context is not None else None)
            so_far, phrase = phrase_so_far(context, notes, params.bars)
            segments.append(Segment(rendered, tokens, influences(so_far, self.profiles, self._alike(allowed, prefix)),
                                    degrees,
                                    bar + params.bars, theme, resampled,
                                    tuple(context.tokens) if context is not None else (), phrase))
        return segments

    def _alike(self, allowed: set[str], prefix: list[int]) -> set[str]:
        """The allowed works trained under the segment's own conditioning (mode and energy tokens): what the
        model plays under them it learned from those (``make bench-attribution``); all allowed when none is."""
        if self.conditioning is None:
            return allowed
        alike = {w for w in allowed if self.conditioning.get(w) == (prefix[1], prefix[2])}
        return alike or allowed

    def _sample(self, jobs: list[Job], prefixes: list[list[int]], seeds: list[int]) -> list[list[int]]:
        return sample_batch(
            self.model, prefixes, [job.params.bars * STEPS_PER_BAR for job in jobs], [job.params.mode for job in jobs],
            [torch.Generator().manual_seed(seed % (1 << 63)) for seed in seeds],
            [1 if job.params.energy >= 0.67 else 2 if job.params.energy >= 0.34 else 4 for job in jobs])

    @staticmethod
    def _heard(job: Job, context: Context | None, tokens: list[int]) -> tuple[list[Note], Theme | None, list[int]]:
        """The melody as heard (the session's form applied) and its tokens (the next segment's context)."""
        params = job.params
        sampled = tokens_to_notes(tokens)
        notes, theme, _ = form.apply_form(sampled, context.bar if context is not None else 0,
                                          params.bars, context.theme if context is not None else None,
                                          params.mode, energy_token(params.energy))
        if notes != sampled:  # the melody as heard (a theme repeated, a cadence landed) is the context that follows
            end = max((n.start + n.length for n in notes), default=0)
            steps = params.bars * STEPS_PER_BAR
            tokens = notes_to_tokens([(n.start, n.length, n.rel) for n in notes]
                                     + ([(end, steps - end, None)] if end < steps else []))
        return notes, theme, tokens


def phrase_so_far(context: Context | None, notes: list[Note],
                  bars: int) -> tuple[list[Note], tuple[tuple[int, int, int], ...]]:
    """The melody attribution reads for a segment — its phrase so far: the notes of the phrase its first
    bar belongs to (``form.PHRASE_BARS``) from the phrase's first bar line to the segment's end, never a
    note not yet generated — and what the next segment's phrase so far starts from (``Context.phrase``)."""
    bar = context.bar if context is not None else 0
    start = bar - bar % form.PHRASE_BARS
    offset = (bar - start) * STEPS_PER_BAR
    so_far = [Note(*n) for n in (context.phrase if context is not None else ())] + [
        Note(n.start + offset, n.length, n.rel) for n in notes]
    after = bar + bars
    cut = (after - after % form.PHRASE_BARS - start) * STEPS_PER_BAR
    return so_far, tuple((n.start - cut, n.length, n.rel) for n in so_far if n.start >= cut)


def _after(context: Context | None, notes: list[Note]) -> tuple[list[Note], int]:
    """The segment's melody read on from the notes before it (its context's), in time order, and
    where its own notes begin."""
    before = tokens_to_notes(list(context.tokens)) if context is not None else []
    shift = max((n.start + n.length for n in before), default=0)
    return [Note(n.start - shift, n.length, n.rel) for n in before] + notes, len(before)


@dataclass(frozen=True)
class Job:
    params: Params
    seed: int
    context: Context | None = None

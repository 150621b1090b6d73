"""The music a listener hears, measured from the audio, against the engine of BASELINE in the same run.

The baseline is the engine as it was at BASELINE: that commit's ``services/`` tree (``git archive``)
runs the same measurements in a subprocess, one after the other with today's, so every figure has a
before and an after from one run.

  session           a warm-up (walk at 100 BPM), a run (165) and a cool-down (70, at rest), the
                    energy and tempo moving per bar as soundtrack.policy moves them (energy at most
                    0.1 a bar; tempo gliding, 1-bar segments up to 110 BPM and 2 bars above,
                    soundtrack.schedule.bars_for), each segment continuing its predecessor
  loudness_range_lu EBU Tech 3342 loudness range of the joined session (short-term 3 s loudness
                    every second, absolute gate -70 LUFS, relative gate -20 LU, 95th minus 10th
                    percentile); goal >= 6
  max_join_jump_lu  at every join whose two segments have the same energy: the difference of their
                    integrated loudness; goal <= 1
  energy_spearman   Spearman rank correlation of energy (11 levels x SEEDS seeds, 120 BPM, 2 bars)
                    with the audio's onset density (onsets a second, ``onset_density``) and
                    with its spectral centroid; the lower of the two; goal >= 0.9
  tempo_error_max   the largest |measured / asked - 1| of inference.analysis.estimate_tempo over
                    60-200 BPM x three energies; goal <= 0.01
  render_x_realtime seconds of audio per CPU second (one thread) rendering the session's segments
                    (production lengths); goal >= 60
  phrase_repetition the share of the session's bars (after the first) whose melody repeats or
                    varies an earlier bar's (the same onsets and pitches, Jaccard >= 0.75), beside
                    the same figure over the soprano lines of CORPUS_WORKS chorales of the catalog
                    (corpus_phrase_repetition)
  oa_generated      the mean overlapped area of Yang & Lerch's seven features (bench/melody_stats.py)
                    between PIECES generated 16-bar melodies and the held-out chorales split by
                    tune, beside oa_reference: as many training works against the same held-out set;
                    goal oa_generated >= 0.9 x oa_reference and above the baseline's
  harmony_agreement the share of the held-out chorales' half bars (split by tune) where the engine's
                    harmony, given Bach's melody, picks Bach's own chord (inference.harmony.chords_of
                    reads it from the four voices), beside the rule it replaced (_rule)
  memorization_*    the longest run of (interval, duration) pairs a generated melody shares with a
                    training work, in pairs (_notes) and bars (_bars), beside the held-out chorales'
                    (memorization_reference_*); goal no higher than the reference and <= 2 bars
  attribution_rank_corr  make bench-attribution's check of the influence weights against retraining,
                    from the models it trained (kept in .state/bench-attribution); null before it ran
                    (it trains 39 models: ~25 minutes); goal >= 0.7
Last line: RESULT {json}.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import itertools
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import melody_stats
import numpy as np
import pyloudnorm
import torch
from scipy.stats import spearmanr

from inference.analysis import estimate_tempo
from inference.engine import Engine, Job, Params
from inference.music import STEPS_PER_BAR, Note, tokens_to_notes
from inference.render import SAMPLE_RATE

BASELINE = "e808b989c5d3f780f84c4c323fa07bad5dec300f"  # the engine before energy shaped loudness and drums
ROOT = Path(__file__).resolve().parents[1]
SR = SAMPLE_RATE
SEEDS = 4
CORPUS_WORKS = 60
PIECES, PIECE_SEGMENTS = 24, 8  # generated melodies of 16 bars for the symbolic figures


def plan(walk_s: float = 40, run_s: float = 90, rest_s: float = 50) -> list[Params]:
    """The session's segments: each phase's wanted (tempo, energy) approached per bar as the policy does
    (made here, passed to the baseline's subprocess: its policy module may differ)."""
    from soundtrack.policy import ramp
    from soundtrack.schedule import bars_for

    phases = [(100.0, 0.3, walk_s), (165.0, 0.85, run_s), (70.0, 0.2, rest_s)]
    tempo, energy, out = 100.0, 0.3, []
    for goal_tempo, goal_energy, seconds in phases:
        spent = 0.0
        while spent < seconds:
            bars = bars_for(tempo)
            start, tempo = tempo, ramp(tempo, goal_tempo, bars, fast=True)
            energy = round(energy + max(-0.1 * bars, min(0.1 * bars, goal_energy - energy)), 3)
            out.append(Params(round(tempo, 2), energy, "MAJOR", 7, bars, None if start == tempo else round(start, 2)))
            spent += bars * 240 / ((start + tempo) / 2)
    return out


def render_session(engine: Engine, params: list[Params]) -> tuple[list[np.ndarray], list[list[tuple[int, int]]], float]:
    """The session's segment audio, each segment's melody bars, and the CPU seconds its rendering
    took (after a warm-up segment)."""
    engine.generate_batch([Job(params[0], seed=999)])
    out, bars, context, cpu = [], [], None, 0.0
    for i, p in enumerate(params):
        started = time.process_time()
        (segment,) = engine.generate_batch([Job(p, seed=1000 + i, context=context)])
        cpu += time.process_time() - started
        context = segment.context
        out.append(segment.rendered.audio)
        bars.extend(melody_bars(tokens_to_notes(segment.tokens), p.bars))
    return out, bars, cpu


def melody_bars(notes: list[Note], count: int) -> list[list[tuple[int, int]]]:
    """(onset in the bar, pitch) of the notes starting in each of ``count`` bars."""
    return [[(n.start % STEPS_PER_BAR, n.rel) for n in notes if k * STEPS_PER_BAR <= n.start < (k + 1) * STEPS_PER_BAR]
            for k in range(count)]


def repetition(bars: list[list[tuple[int, int]]]) -> float:
    """The share of bars after the first whose (onset, pitch) set has Jaccard >= 0.75 with an earlier bar's."""
    sets = [frozenset(b) for b in bars]
    hits = sum(1 for i in range(1, len(sets)) if sets[i] and any(
        len(sets[i] & sets[j]) / len(sets[i] | sets[j]) >= 0.75 for j in range(i)))
    return hits / max(1, len(sets) - 1)


def corpus_repetition() -> float:
    """``repetition`` over the soprano lines of the first CORPUS_WORKS usable chorales, per work."""
    from inference.catalog import load_catalog
    from inference.train import extract

    shares = []
    for work in load_catalog():
        extracted = extract(work)
        if extracted is None:
            continue
        notes = tokens_to_notes(extracted["tokens"])
        shares.append(repetition(melody_bars(notes, max(1, (notes[-1].start + notes[-1].length) // STEPS_PER_BAR))))
        if len(shares) == CORPUS_WORKS:
            break
    return float(np.mean(shares))


METER = pyloudnorm.Meter(SR)


def _weighted(audio: np.ndarray) -> np.ndarray:
    """K-weighted audio (pyloudnorm's BS.1770 filters)."""
    out = audio.astype(np.float64)
    for f in METER._filters.values():  # the meter's own K-weighting stages
        out = f.apply_filter(out)
    return out


def loudness_range(audio: np.ndarray) -> float:
    """EBU Tech 3342 LRA: short-term (3 s) loudness every second, gated, P95 - P10."""
    weighted = _weighted(audio)
    values = []
    for start in range(0, len(audio) - 3 * SR + 1, SR):
        power = float(np.mean(np.sum(weighted[start:start + 3 * SR] ** 2, axis=1)))
        if power > 0:
            values.append(-0.691 + 10 * np.log10(power))
    v = np.array([x for x in values if x > -70])
    v = v[v > 10 * np.log10(np.mean(10 ** (v / 10))) - 20]
    return float(np.percentile(v, 95) - np.percentile(v, 10))


def join_jumps(segments: list[np.ndarray], params: list[Params]) -> list[float]:
    """|integrated loudness of a segment - of the next| for neighbours of the same energy."""
    out = []
    for i in range(len(segments) - 1):
        if params[i].energy == params[i + 1].energy:
            out.append(abs(METER.integrated_loudness(segments[i].astype(np.float64))
                           - METER.integrated_loudness(segments[i + 1].astype(np.float64))))
    return out


def onset_density(audio: np.ndarray, hop: int = 512, n_fft: int = 2048, bands: int = 40) -> float:
    """Onsets a second: the spectral flux of 40 log-spaced bands in dB (30 Hz-16 kHz, 80 dB floor),
    normalised to 0-1 and peak-picked as Boeck, Krebs & Schedl (ISMIR 2012) do (a local maximum
    over 30 ms, 0.07 above the mean of the 100 ms either side, 30 ms apart)."""
    mono = audio.mean(axis=1)
    frames = 1 + (len(mono) - n_fft) // hop
    index = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]
    power = np.abs(np.fft.rfft(mono[index] * np.hanning(n_fft), axis=1)) ** 2
    freqs, edges = np.fft.rfftfreq(n_fft, 1 / SR), np.geomspace(30, 16_000, bands + 1)
    banded = np.stack([power[:, (freqs >= lo) & (freqs < hi)].sum(axis=1) for lo, hi in itertools.pairwise(edges)],
                      axis=1)
    db = 10 * np.log10(np.maximum(banded, 1e-10 * banded.max()))
    flux = np.maximum(0.0, np.diff(np.maximum(db, db.max() - 80), axis=0)).mean(axis=1)
    flux = (flux - flux.min()) / max(1e-12, float(flux.max() - flux.min()))
    fps = SR / hop
    near, around = int(0.03 * fps), int(0.1 * fps)
    onsets, last = 0, -len(flux)
    for i, value in enumerate(flux):
        peak = value >= flux[max(0, i - near): i + 1].max()
        if not peak or value < flux[max(0, i - around): i + around + 1].mean() + 0.07:
            continue
        if i - last > near:
            onsets, last = onsets + 1, i
    return onsets / (len(audio) / SR)


def centroid(audio: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(audio.mean(axis=1)))
    freqs = np.fft.rfftfreq(len(audio), 1 / SR)
    return float(np.sum(freqs * spectrum) / np.sum(spectrum))


def energy_correlation(engine: Engine) -> dict[str, float]:
    energies = [e / 10 for e in range(11) for _ in range(SEEDS)]
    audio = [engine.generate(Params(120, e, "MAJOR", 7, 2), seed=s).rendered.audio
             for e, s in zip(energies, [s for _ in range(11) for s in range(SEEDS)], strict=True)]
    return {"onsets": float(spearmanr(energies, [onset_density(a) for a in audio]).statistic),
            "centroid": float(spearmanr(energies, [centroid(a) for a in audio]).statistic)}


def tempo_error(engine: Engine) -> float:
    worst = 0.0
    for bpm in (60, 72, 90, 110, 128, 150, 172, 200):
        for energy in (0.1, 0.5, 0.9):
            audio = engine.generate(Params(bpm, energy, "MAJOR", bpm % 12, 8), seed=bpm).rendered.audio
            worst = max(worst, abs(estimate_tempo(audio) / bpm - 1))
    return worst


def pieces(engine: Engine) -> list[list[tuple[int, int, int]]]:
    """PIECES melodies of PIECE_SEGMENTS 2-bar segments each (a chorale's length), each segment
    continuing the previous one, major and minor in turn, at three energies: (start, length, pitch)."""
    out = []
    for i in range(PIECES):
        context, melody = None, []
        for j in range(PIECE_SEGMENTS):
            params = Params(120.0, (0.2, 0.5, 0.85)[i % 3], ("MAJOR", "MINOR")[i % 2], 0, 2)
            (segment,) = engine.generate_batch([Job(params, seed=5000 + 100 * i + j, context=context)])
            context = segment.context
            melody += [(j * 2 * STEPS_PER_BAR + n.start, n.length, n.rel) for n in tokens_to_notes(segment.tokens)]
        out.append(melody)
    return out


def corpus_sets() -> tuple[list[Any], list[Any], int, list[Any]]:
    """The soprano lines the model was trained on, the held-out works split by tune (no held-out
    work that is a harmonisation of a training work's tune), how many held-out works that dropped,
    and those held-out works as (mode, melody notes, Bach's chord per half bar)."""
    from inference.catalog import load_catalog
    from inference.train import MODEL_DIR, extract

    manifest = json.loads((MODEL_DIR / "training_manifest.json").read_text())
    held, works = set(manifest["held_out_works"]), {w["work_id"] for w in manifest["works"]}
    extracted = {w.work_id: e for w in load_catalog() if w.work_id in works and (e := extract(w)) is not None}
    melodies = {k: [(n.start, n.length, n.rel) for n in tokens_to_notes(e["tokens"])] for k, e in extracted.items()}
    trained = [m for k, m in sorted(melodies.items()) if k not in held]
    held_out = {k: m for k, m in sorted(melodies.items()) if k in held}
    by_tune = {k: m for k, m in held_out.items() if not melody_stats.same_tune(m, trained)}
    chorales = [(extracted[k]["mode"], tokens_to_notes(extracted[k]["tokens"]), extracted[k]["harmony"])
                for k in by_tune if extracted[k]["harmony"]]
    return trained, list(by_tune.values()), len(held_out) - len(by_tune), chorales


def harmony_agreement(harmonize: Any, chorales: list[Any]) -> float:
    """The share of half bars with a named chord where ``harmonize(notes, mode, bars)`` picks Bach's."""
    hits = total = 0
    for mode, melody, halves in chorales:
        chosen = harmonize(melody, mode, (len(halves) + 1) // 2)
        for (_, degree), ours in zip(halves, chosen, strict=False):
            if degree is not None:
                total += 1
                hits += degree == ours
    return hits / max(1, total)


def symbolic(generated: dict[str, list[Any]], trained: list[Any], held_out: list[Any]) -> dict[str, Any]:
    """oa_* and memorization_* of each engine's pieces (``generated``: label -> melodies)."""
    sample = trained[::max(1, len(trained) // PIECES)][:PIECES]  # as many training works as pieces
    out: dict[str, Any] = {"oa_reference": round(melody_stats.mean_overlapped_area(sample, held_out), 4),
                           "memorization_reference": melody_stats.longest_shared_run(held_out, trained)}
    for label, melodies in generated.items():
        out[label] = {"oa_generated": round(melody_stats.mean_overlapped_area(melodies, held_out), 4),
                      "oa_generated_per_feature": melody_stats.overlapped_area(melodies, held_out),
                      "memorization": melody_stats.longest_shared_run(melodies, trained)}
    return out


def measure(params: list[Params]) -> dict[str, Any]:
    """Every figure of the engine on the import path (today's, or BASELINE's in the subprocess)."""
    torch.set_num_threads(1)
    engine = Engine()
    segments, bars, cpu = render_session(engine, params)
    audio = np.concatenate(segments)
    seconds = len(audio) / SR
    jumps = join_jumps(segments, params)
    energy = energy_correlation(engine)
    return {"loudness_range_lu": round(loudness_range(audio), 2),
            "max_join_jump_lu": round(max(jumps), 2), "joins_at_constant_energy": len(jumps),
            "energy_spearman": round(min(energy.values()), 3),
            "energy_spearman_onsets": round(energy["onsets"], 3),
            "energy_spearman_centroid": round(energy["centroid"], 3),
            "tempo_error_max": round(tempo_error(engine), 5),
            "phrase_repetition": round(repetition(bars), 3),
            "render_x_realtime": round(seconds / cpu, 1), "session_s": round(seconds, 1), "segments": len(params),
            "engine_file": str(Path(sys.modules[Engine.__module__].__file__ or "")), "melodies": pieces(engine)}


def measured_at(commit: str, params: list[Params]) -> dict[str, Any]:
    """``measure`` with the services tree of ``commit``, in a subprocess (this file, --only)."""
    with tempfile.TemporaryDirectory() as tmp:
        session = Path(tmp) / "session.json"
        session.write_text(json.dumps([dataclasses.asdict(p) for p in params]))
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "services"], capture_output=True)
        if archive.returncode != 0:
            why = archive.stderr.decode().strip()
            raise SystemExit(f"the baseline commit {commit[:12]} is not in this clone ({why}); "
                             "a shallow clone needs `git fetch --unshallow`")
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(tmp, filter="data")
        env = {**os.environ, "PYTHONPATH": f"{tmp}/services:{ROOT}"}
        done = subprocess.run([sys.executable, __file__, "--only", str(session)],
                              check=True, capture_output=True, text=True, env=env, cwd=ROOT)
        figures = json.loads(done.stdout.strip().splitlines()[-1].removeprefix("FIGURES "))
        if not figures.pop("engine_file").startswith(tmp):
            raise RuntimeError(f"the subprocess did not run the engine of {commit}")
    return figures


def show(label: str, figures: dict[str, Any]) -> None:
    print(f"{label:9s} " + "  ".join(f"{k} {v}" for k, v in figures.items()), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--session-scale", type=float, default=1.0, help="phase lengths x this (short runs)")
    parser.add_argument("--only", metavar="SESSION_JSON", help="this engine's FIGURES {json} for that session")
    args = parser.parse_args()
    if args.only:
        print("FIGURES " + json.dumps(measure([Params(**p) for p in json.loads(Path(args.only).read_text())])))
        return
    params = plan(40 * args.session_scale, 90 * args.session_scale, 50 * args.session_scale)
    before = measured_at(BASELINE, params)
    before_melodies = before.pop("melodies")
    show("baseline", before)
    after = measure(params)
    after.pop("engine_file")
    after_melodies = after.pop("melodies")
    show("engine", after)
    corpus = round(corpus_repetition(), 3)
    print(f"corpus    phrase_repetition {corpus} ({CORPUS_WORKS} chorales)", flush=True)
    trained, held_out, same_tune, chorales = corpus_sets()
    from inference.music import harmonize

    learned = Engine().harmony
    harmony = {"harmony_agreement": round(harmony_agreement(learned.choose, chorales), 3) if learned else None,
               "harmony_agreement_rule": round(harmony_agreement(harmonize, chorales), 3),
               "harmony_half_bars": sum(1 for _, _, h in chorales for _, d in h if d is not None)}
    print(f"harmony   Bach's own chord chosen under held-out chorale melodies: {json.dumps(harmony)}", flush=True)
    sym = symbolic({"engine": after_melodies, "baseline": before_melodies}, trained, held_out)
    print(f"symbolic  {len(after_melodies)} pieces of {2 * PIECE_SEGMENTS} bars against {len(held_out)} held-out "
          f"chorales split by tune ({same_tune} held-out harmonisations of training tunes left out), "
          f"{len(trained)} trained: {json.dumps(sym)}", flush=True)
    after |= {"oa_generated": sym["engine"]["oa_generated"], "oa_reference": sym["oa_reference"],
              "oa_generated_per_feature": sym["engine"]["oa_generated_per_feature"],
              "memorization_max_shared_notes": sym["engine"]["memorization"]["pairs"],
              "memorization_max_shared_bars": sym["engine"]["memorization"]["bars"],
              "memorization_reference_max_shared_notes": sym["memorization_reference"]["pairs"],
              "memorization_reference_max_shared_bars": sym["memorization_reference"]["bars"],
              "held_out_by_tune": len(held_out), **harmony}
    before |= {"oa_generated": sym["baseline"]["oa_generated"],
               "memorization_max_shared_notes": sym["baseline"]["memorization"]["pairs"],
               "memorization_max_shared_bars": sym["baseline"]["memorization"]["bars"]}
    goals = {"loudness_range_lu": after["loudness_range_lu"] >= 6, "max_join_jump_lu": after["max_join_jump_lu"] <= 1,
             "energy_spearman": after["energy_spearman"] >= 0.9, "tempo_error_max": after["tempo_error_max"] <= 0.01,
             "render_x_realtime": after["render_x_realtime"] >= 60,
             "oa_generated": after["oa_generated"] >= 0.9 * after["oa_reference"]
             and after["oa_generated"] > before["oa_generated"],
             "memorization": after["memorization_max_shared_notes"] <= after["memorization_reference_max_shared_notes"]
             and after["memorization_max_shared_bars"] <= 2}
    import bench_attribution  # here: the baseline's subprocess runs this file on an engine without it

    try:  # the check against retraining, when make bench-attribution has trained its models
        attribution = bench_attribution.check(bench_attribution.options([]), cached_only=True)
        after |= {k: attribution[k] for k in ("attribution_rank_corr", "attribution_rank_corr_baseline",
                                              "causal_seed_agreement")}
        goals["attribution_rank_corr"] = attribution["attribution_rank_corr"] >= 0.7
    except bench_attribution.NotTrained as missing:
        after["attribution_rank_corr"] = None
        print(f"attribution: not measured, no retrained model {missing}", flush=True)
    met = {k: bool(v) for k, v in goals.items()}
    print("RESULT " + json.dumps({**after, "corpus_phrase_repetition": corpus, "baseline": before,
                                  "baseline_commit": BASELINE[:12], "goals_met": met,
                                  "render_ratio": round(after["render_x_realtime"] / before["render_x_realtime"], 3)}))


if __name__ == "__main__":
    sys.exit(main())

"""`make train`: train the melody model on the consenting part of the demo catalog.

Deterministic (fixed seed, 2 threads), shows a progress bar with the loss, and writes
into services/inference/model/: weights.pt, training_manifest.json (every work used
with its hash, the consent snapshot's hash, hyper-parameters, final loss), loss_curve.png
and the per-work n-gram profiles used for attribution (profiles.json).

    python -m inference.train [--epochs N] [--out DIR] [--limit N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from inference.catalog import CatalogWork, ConsentSnapshot, load_catalog
from inference.harmony import chords_of, learn
from inference.memorization import pairs
from inference.model import DEFAULTS, MelodyModel
from inference.music import BOS, MAJOR, MINOR, PAD, STEPS_PER_BAR, energy_token, notes_to_tokens, tokens_to_notes
from inference.provenance import profile

MODEL_DIR = Path(__file__).with_name("model")
MODEL_ID = "entrain-chorale-gru"
SEED = 20261124


def extract(work: CatalogWork) -> dict[str, Any] | None:
    """The soprano line of a 4/4 chorale as tokens relative to its key, or None if unusable."""
    from music21 import converter

    score = converter.parse(str(work.path))
    signatures = score.recurse().getElementsByClass("TimeSignature")
    if not signatures or any(ts.ratioString != "4/4" for ts in signatures):
        return None
    key = score.analyze("key")
    tonic = key.tonic.pitchClass
    reference = 60 + tonic if tonic <= 7 else 48 + tonic  # tonic near middle C
    soprano = score.parts[0].flatten()
    pickup = soprano.notes[0].offset % 4 if soprano.notes else 0

    def voice(part: Any) -> list[tuple[int, int, int]]:
        events = []
        for note in part.flatten().notes:
            if not hasattr(note, "pitch"):
                continue
            start = round(float(note.offset - pickup) * 4)
            length = max(1, round(float(note.quarterLength) * 4))
            if start >= 0:
                events.append((start, length, note.pitch.midi - reference))
        return events

    events = voice(score.parts[0])
    if len(events) < 8:
        return None
    bars = max(1, (events[-1][0] + events[-1][1]) // STEPS_PER_BAR)
    density = len(events) / bars
    energy = 0.2 if density < 3.5 else 0.5 if density < 4.5 else 0.85
    mode = "MAJOR" if key.mode == "major" else "MINOR"
    tokens = [BOS, MAJOR if mode == "MAJOR" else MINOR, energy_token(energy), *notes_to_tokens(events)]
    four_part = len(score.parts) == 4
    return {"work_id": work.work_id, "mode": mode, "tokens": tokens,
            "harmony": chords_of([voice(p) for p in score.parts], mode) if four_part else []}


WINDOW, STRIDE = 96, 64


def windows_of(tokens: list[int]) -> list[list[int]]:
    """Training windows: the conditioning prefix (BOS, mode, energy) + up to WINDOW tokens of melody.

    Generation sees the same shape: prefix + the previous segment's last tokens.
    """
    prefix, body = tokens[:3], tokens[3:]
    return [prefix + body[i:i + WINDOW] for i in range(0, max(1, len(body) - STRIDE), STRIDE)]


def version_for(snapshot: ConsentSnapshot) -> str:
    """A model version is named by the consent snapshot it was trained under."""
    return f"1.0.0+consent.{snapshot.sha256[:8]}"


def train(epochs: int, out: Path, limit: int | None = None, seed: int = SEED,
          snapshot: ConsentSnapshot | None = None, progress: bool = True) -> dict[str, Any]:
    """Train on the works ``snapshot`` (default: the committed consent snapshot) allows; write the
    version into ``out``, with the snapshot itself when it is not the committed one."""
    if snapshot is None:
        snapshot = ConsentSnapshot.load()
    elif snapshot.raw:
        out.mkdir(parents=True, exist_ok=True)
        (out / "consent_snapshot.json").write_bytes(snapshot.raw)
    works, excluded, sequences = corpus(snapshot, limit, progress)
    held_out = sequences[::10]  # every tenth work: validation only, never trained on
    trained = [s for i, s in enumerate(sequences) if i % 10]
    model, losses, val_losses = fit(trained, held_out, epochs, seed, progress)
    windows = [w for s in trained for w in windows_of(s["tokens"])]

    out.mkdir(parents=True, exist_ok=True)
    torch.save({"config": model.config, "state": model.state_dict()}, out / "weights.pt")
    # Attribution profiles of the works the model learned from: held-out works taught it nothing.
    profiles = {s["work_id"]: profile(tokens_to_notes(s["tokens"])) for s in trained}
    (out / "profiles.json").write_text(json.dumps(profiles, sort_keys=True, separators=(",", ":")) + "\n")
    (out / "copy_guard.json").write_text(copy_guard_text(trained))
    (out / "harmony.json").write_text(harmony_text(trained))
    (out / "conditioning.json").write_text(conditioning_text(trained))
    by_id = {w.work_id: w for w in works}
    manifest = {
        "model_id": MODEL_ID,
        "consent_snapshot_sha256": snapshot.sha256,
        "seed": seed, "epochs": epochs, "hyperparameters": model.config, "vocab": "inference.music",
        "works": [{"work_id": s["work_id"], "content_sha256": by_id[s["work_id"]].content_sha256,
                   "source": by_id[s["work_id"]].source} for s in sequences],
        "excluded_no_training_consent": excluded,
        "skipped_not_4_4": len(works) - len(sequences),
        "final_loss": round(losses[-1], 4), "first_loss": round(losses[0], 4),
        "final_held_out_loss": round(val_losses[-1], 4), "best_held_out_loss": round(min(val_losses), 4),
        "held_out_works": [s["work_id"] for s in held_out],
        "tokens": int(sum(len(s["tokens"]) for s in sequences)), "windows": len(windows),
    }
    text = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
    (out / "training_manifest.json").write_text(text)
    manifest_sha = hashlib.sha256(text.encode()).hexdigest()
    (out / "version.json").write_text(json.dumps({
        "model_id": MODEL_ID, "model_version": version_for(snapshot),
        "training_manifest_sha256": manifest_sha}, indent=1) + "\n")
    _plot(losses, val_losses, out / "loss_curve.png")
    return {"losses": losses, "held_out_losses": val_losses, "works": len(sequences), "manifest_sha256": manifest_sha,
            "model_version": version_for(snapshot)}


def corpus(snapshot: ConsentSnapshot, limit: int | None = None,
           progress: bool = True) -> tuple[list[CatalogWork], list[str], list[dict[str, Any]]]:
    """The works ``snapshot`` lets the model train on, the ids of those it excludes, and the usable
    ones' melodies (``extract``)."""
    works = [w for w in load_catalog() if snapshot.trainable(w)][:limit]
    excluded = [w.work_id for w in load_catalog() if not snapshot.trainable(w)]
    sequences = []
    for work in tqdm(works, desc="parsing corpus", unit="work", disable=not progress):
        item = extract(work)
        if item is not None:
            sequences.append(item)
    return works, excluded, sequences


def fit(trained: list[dict[str, Any]], held_out: list[dict[str, Any]], epochs: int, seed: int,
        progress: bool = True) -> tuple[MelodyModel, list[float], list[float]]:
    """The melody model trained on ``trained``'s windows from ``seed``, its training and held-out losses
    per epoch (deterministic: the seed fixes the weights' initialisation and the windows' order)."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    torch.set_num_threads(2)
    model = MelodyModel(**DEFAULTS)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss(ignore_index=PAD)
    batch = _pad([w for s in trained for w in windows_of(s["tokens"])])
    validation = _pad([w for s in held_out for w in windows_of(s["tokens"])])
    losses: list[float] = []
    val_losses: list[float] = []
    order = list(range(len(batch)))
    bar = tqdm(range(epochs), desc="training", unit="epoch", disable=not progress)
    for _ in bar:
        model.train()
        rng.shuffle(order)
        total, count = 0.0, 0
        for start in range(0, len(order), 64):
            rows = batch[order[start:start + 64]]
            logits, _ = model(rows[:, :-1])
            loss = loss_fn(logits.reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1))
            optimiser.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            total += float(loss.detach()) * len(rows)
            count += len(rows)
        losses.append(total / count)
        model.eval()
        with torch.no_grad():
            logits, _ = model(validation[:, :-1])
            val_losses.append(float(loss_fn(logits.reshape(-1, logits.shape[-1]), validation[:, 1:].reshape(-1))))
        bar.set_postfix(loss=f"{losses[-1]:.3f}", held_out=f"{val_losses[-1]:.3f}")
    model.eval()
    return model, losses, val_losses


def copy_guard_text(trained: list[dict[str, Any]]) -> str:
    """copy_guard.json: every trained work's melody as (interval, duration) pairs (inference.memorization)."""
    melodies = {s["work_id"]: pairs(tokens_to_notes(s["tokens"])) for s in trained}
    return json.dumps(melodies, sort_keys=True, separators=(",", ":")) + "\n"


def conditioning_text(trained: list[dict[str, Any]]) -> str:
    """conditioning.json: every trained work's conditioning tokens (mode, energy): what it taught the model
    to play under them (attribution reads it)."""
    return json.dumps({s["work_id"]: s["tokens"][1:3] for s in trained}, sort_keys=True, separators=(",", ":")) + "\n"


def harmony_text(trained: list[dict[str, Any]]) -> str:
    """harmony.json: the trained works' chord progressions counted (inference.harmony)."""
    counts = learn([(s["mode"], s["harmony"]) for s in trained])
    return json.dumps(counts, sort_keys=True, separators=(",", ":")) + "\n"


def _pad(windows: list[list[int]]) -> torch.Tensor:
    batch = torch.full((len(windows), WINDOW + 3), PAD, dtype=torch.long)
    for i, w in enumerate(windows):
        batch[i, : len(w)] = torch.tensor(w)
    return batch


def _plot(losses: list[float], held_out: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(1, len(losses) + 1), losses, marker=".", label="training")
    ax.plot(range(1, len(held_out) + 1), held_out, marker=".", label="held-out works")
    ax.legend()
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(f"{MODEL_ID}: training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=18)  # where held-out loss bottoms out (see loss_curve.png)
    parser.add_argument("--out", type=Path, default=MODEL_DIR)
    parser.add_argument("--limit", type=int, default=None, help="train on the first N works only")
    args = parser.parse_args()
    started = time.monotonic()
    result = train(args.epochs, args.out, args.limit)
    print(f"trained on {result['works']} works in {time.monotonic() - started:.0f}s: loss "
          f"{result['losses'][0]:.3f} -> {result['losses'][-1]:.3f}, held-out {result['held_out_losses'][-1]:.3f}; "
          f"manifest {result['manifest_sha256'][:12]}")


if __name__ == "__main__":
    main()

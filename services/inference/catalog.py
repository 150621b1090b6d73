"""Entrain's demo catalog: the Bach chorales that ship with music21 (public domain).

Every work gets a stable id (from its corpus path), title, composer, collection,
the SHA-256 of its source file, and invented demo rights holders with shares per
right type. The consent snapshot (``consent_snapshot.json``, committed) lists the
demo rights holders who *granted* AI training (and generation) when the model was
trained: a work is trained on only if every one of its holders granted training;
a holder not listed did not (opt-in, ``kit.consent``'s rule).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from kit.consent import ConsentHistory

CONSENT_SNAPSHOT = Path(__file__).with_name("consent_snapshot.json")
DEMO_HOLDERS = 24
PPM = 1_000_000


@dataclass(frozen=True)
class CatalogWork:
    work_id: str
    title: str
    source: str
    path: Path
    content_sha256: str
    shares: tuple[tuple[str, str, int], ...]  # (rights holder, right type, ppm)

    @property
    def rights_holders(self) -> frozenset[str]:
        return frozenset(h for h, _, _ in self.shares)

    def record(self, updated_at: int) -> dict[str, Any]:
        """The catalog.works.v1 value."""
        return {
            "work_id": self.work_id, "title": self.title, "composer": "Johann Sebastian Bach",
            "collection": "Bach chorales (music21 corpus)", "source": self.source,
            "content_sha256": self.content_sha256, "license": "public-domain", "demo_data": True,
            "shares": [{"rights_holder_id": h, "right_type": rt, "share_ppm": ppm} for h, rt, ppm in self.shares],
            "updated_at": updated_at,
        }


def _demo_shares(digest: bytes) -> tuple[tuple[str, str, int], ...]:
    """Deterministic demo rights: one composition publisher, one or two recording owners."""
    publisher = f"rh-demo-{digest[0] % DEMO_HOLDERS:04d}"
    first = f"rh-demo-{digest[1] % DEMO_HOLDERS:04d}"
    second = f"rh-demo-{digest[2] % DEMO_HOLDERS:04d}"
    if first == second or digest[3] % 2:
        recording = ((first, "RECORDING", PPM),)
    else:
        split = 500_000 + (digest[4] % 5) * 50_000
        recording = ((first, "RECORDING", split), (second, "RECORDING", PPM - split))
    return ((publisher, "COMPOSITION", PPM), *recording)


@lru_cache(maxsize=1)
def load_catalog() -> tuple[CatalogWork, ...]:
    from music21 import corpus

    works = []
    for path in sorted(corpus.getComposer("bach")):
        if path.suffix not in (".mxl", ".xml", ".musicxml"):
            continue
        data = path.read_bytes()
        digest = hashlib.sha256(data).digest()
        name = path.stem
        works.append(CatalogWork(
            work_id=f"wk-bach-{name}", title=f"Chorale {name.upper().replace('BWV', 'BWV ')}",
            source=f"music21:bach/{path.name}", path=path, content_sha256=digest.hex(),
            shares=_demo_shares(digest),
        ))
    return tuple(works)


@dataclass(frozen=True)
class ConsentSnapshot:
    granted_training: frozenset[str]
    granted_generation: frozenset[str]
    sha256: str
    withheld_training_works: frozenset[str] = frozenset()  # per-work refusals of holders who grant otherwise
    raw: bytes = b""

    @classmethod
    def load(cls, path: Path = CONSENT_SNAPSHOT) -> ConsentSnapshot:
        return cls.parse(path.read_bytes())

    @classmethod
    def parse(cls, raw: bytes) -> ConsentSnapshot:
        data = json.loads(raw)
        return cls(frozenset(data["granted_training"]), frozenset(data["granted_generation"]),
                   hashlib.sha256(raw).hexdigest(), frozenset(data.get("withheld_training_works", ())), raw)

    @classmethod
    def taken(cls, history: ConsentHistory, at_ms: int, taken_at: str) -> ConsentSnapshot:
        """The live consent records as a snapshot: catalog-wide grants per demo holder, and the works
        a per-work record withholds from training, so ``trainable`` is the live rule at ``at_ms``."""
        holders = sorted({h for w in load_catalog() for h in w.rights_holders})
        training = [h for h in holders if history.allowed("ai_training", h, "", at_ms)]
        generation = [h for h in holders if history.allowed("ai_generation", h, "", at_ms)]
        withheld = sorted(w.work_id for w in load_catalog() if w.rights_holders <= set(training)
                          and not history.work_allowed("ai_training", w.rights_holders, w.work_id, at_ms))
        body = {"description": "Consent records of catalog.consent.v1 in effect at taken_at, as grants (opt-in), "
                               "taken by the retrainer.", "taken_at": taken_at, "granted_training": training,
                "granted_generation": generation, "withheld_training_works": withheld}
        return cls.parse((json.dumps(body, indent=2) + "\n").encode())

    def history(self) -> ConsentHistory:
        """The snapshot as consent records, read by the shared rule (a holder not listed: no record)."""
        history = ConsentHistory()
        for holder in sorted(self.granted_training | self.granted_generation):
            history.add(holder, None, 0, {"ai_training": holder in self.granted_training,
                                          "ai_generation": holder in self.granted_generation})
        return history

    def trainable(self, work: CatalogWork) -> bool:
        return work.work_id not in self.withheld_training_works and \
            self.history().work_allowed("ai_training", work.rights_holders, work.work_id, 0)

    def consent_body(self, holder: str) -> dict[str, bool]:
        """What a holder's consent record says in the snapshot (the demo and tests seed it through ingest)."""
        return {"ai_training": holder in self.granted_training, "ai_generation": holder in self.granted_generation,
                "likeness": False}


def training_withdrawals(history: ConsentHistory, trained_works: set[str] | frozenset[str],
                         at_ms: int) -> list[tuple[str, str]]:
    """(rights holder, work) for every work a model was trained on whose holder's consent in effect
    at ``at_ms`` refuses ``ai_training``: a model version with any must not generate."""
    return sorted((holder, work.work_id) for work in load_catalog() if work.work_id in trained_works
                  for holder in work.rights_holders if history.refused("ai_training", holder, work.work_id, at_ms))

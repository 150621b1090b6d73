"""The retrainer: a withdrawal of training consent retires every model version trained on the
holder's works, and a new version is trained on the works whose holders grant it now.

    python -m inference.retrainer        (part of the inference deployable; metrics on :9106)

It follows catalog.consent.v1 (the shared rule, ``kit.consent``) and the model registry
(inference.models.v1). On start it records the version built into the image as CURRENT if the
registry has never seen it. Then, every ``ENTRAIN_RETRAINER_POLL_S`` (default 1 s): if a rights
holder whose works the current version was trained on (trained or held out) has a consent
record in effect that refuses ``ai_training``, it

1. publishes the version as RETIRED with the reason (holders, works, when) — inference stops
   generating with it at its next batch anyway, because it applies the same check itself;
2. takes a consent snapshot of the live records and trains on the works it allows
   (``inference.train``; ``ENTRAIN_RETRAINER_EPOCHS``, default 18 as ``make train``);
3. writes the model card with the registry's versions table, packs the version, stores it in
   the segment store and publishes it as CURRENT; inference loads it at its next batch.

The bound: generation with a withdrawn holder's works stops within one inference batch of the
consent record reaching the topic; generation resumes, on a model without those works, after
one training run (the demo catalog's full run: 54 s under ``make up`` here, see the README's "Inference")
plus one batch. A grant (or a re-grant) changes nothing until the next retrain or ``make train``.
Consent is read to the topic's end before every snapshot. A crash between the RETIRED and the
CURRENT record leaves no CURRENT version: the next step trains one. A RETIRED version is never
published again, even when the live consent snapshot would reproduce it (logged).
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import structlog
from prometheus_client import Counter, Histogram

from inference.catalog import ConsentSnapshot, training_withdrawals
from inference.registry import TOPIC, ModelRegistry, manifest_of, pack, record_for, unpack, versions_table
from inference.service import GenerationConsent
from inference.train import MODEL_DIR, train, version_for
from kit.producer import Producer
from kit.serde import TopicSerde
from kit.settings import KafkaSettings, ServiceSettings
from kit.store import SegmentStore, store_from_env

log = structlog.get_logger()
SERVICE = "retrainer"

RETIRED = Counter("entrain_retrainer_versions_retired_total", "Model versions retired because training consent ended.")
TRAINED = Counter("entrain_retrainer_versions_trained_total", "Model versions trained and published.")
TRAIN_SECONDS = Histogram("entrain_retrainer_train_seconds", "Time to train and publish a replacement version.",
                          buckets=(5, 15, 30, 60, 120, 240, 480, 960))


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Retrainer:
    def __init__(self, kafka: KafkaSettings, store: SegmentStore, producer: Producer, epochs: int = 18,
                 limit: int | None = None, builtin: Path = MODEL_DIR) -> None:
        self.store, self.producer, self.epochs, self.limit, self.builtin = store, producer, epochs, limit, builtin
        self.serde = TopicSerde.for_topic(TOPIC, kafka)
        self.consent = GenerationConsent(kafka)
        self.registry = ModelRegistry(kafka)
        self._manifests: dict[str, frozenset[str]] = {}
        self._refused: str | None = None

    def start(self) -> None:
        self.registry.refresh(until_caught_up_s=30)
        self.consent.catch_up()
        builtin = record_for(self.builtin, "CURRENT", "built into the image (make train)", None)
        if builtin["model_version"] not in self.registry.versions:
            self._publish(builtin)

    def step(self, now_ms: int | None = None) -> str | None:
        """Retire and replace the current version if its training consent ended; the new version, or None."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        self.consent.refresh()
        self.registry.refresh()
        current = self.registry.current()
        if current is None:  # every version retired and no replacement (a crash between the two): train one
            retired = max(self.registry.versions.values(), key=lambda r: r["changed_at"], default=None)
            if retired is None:
                return None
            self.consent.catch_up()
            return self._replace(str(retired["model_version"]), now_ms)
        withdrawn = training_withdrawals(self.consent.history, self._trained_works(current), now_ms)
        if not withdrawn:
            return None
        holders = sorted({h for h, _ in withdrawn})
        reason = (f"ai_training withdrawn by {', '.join(holders)} (in effect at {iso(now_ms)}) for "
                  f"{len({w for _, w in withdrawn})} works it was trained on")
        self._publish({**current, "status": "RETIRED", "reason": reason, "changed_at": now_ms})
        RETIRED.inc()
        log.warning("model_version_retired", model_version=current["model_version"], holders=holders,
                    works=len({w for _, w in withdrawn}))
        return self._replace(current["model_version"], now_ms)

    def _replace(self, retired: str, now_ms: int) -> str:
        started = time.monotonic()
        self.consent.catch_up()  # the snapshot must hold every record on the topic, not just those read so far
        snapshot = ConsentSnapshot.taken(self.consent.history, now_ms, iso(now_ms))
        version = version_for(snapshot)
        known = self.registry.versions.get(version)
        if known is not None:  # trained before: a restart mid-way (CURRENT), or a RETIRED one never comes back
            if known["status"] == "RETIRED" and version != self._refused:
                self._refused = version
                log.error("retrain_would_revive_a_retired_version", model_version=version, reason=known["reason"])
            return version
        with tempfile.TemporaryDirectory(prefix="entrain-train-") as tmp:
            out = Path(tmp)
            result = train(self.epochs, out, self.limit, snapshot=snapshot, progress=False)
            record = record_for(out, "CURRENT", f"retrained on the works whose holders grant ai_training at "
                                f"{iso(now_ms)}", None, replaces=retired)
            (out / "MODEL_CARD.md").write_text(model_card(record, result, {**self.registry.versions,
                                                                           version: record}))
            uri, digest = self.store.put(pack(out), "model")
            self._publish({**record, "artifact_uri": uri, "artifact_sha256": digest,
                           "changed_at": int(time.time() * 1000)})
        TRAINED.inc()
        TRAIN_SECONDS.observe(time.monotonic() - started)
        log.info("model_version_published", model_version=version, replaces=retired, works=result["works"],
                 seconds=round(time.monotonic() - started, 1))
        return version

    def _trained_works(self, record: dict[str, object]) -> frozenset[str]:
        version = str(record["model_version"])
        if version not in self._manifests:
            if record["artifact_uri"] is None:
                manifest = manifest_of(self.builtin)
            else:
                with tempfile.TemporaryDirectory() as tmp:
                    folder = unpack(self.store.get(str(record["artifact_uri"])), str(record["artifact_sha256"]),
                                    Path(tmp) / "model")
                    manifest = manifest_of(folder)
            self._manifests[version] = frozenset(w["work_id"] for w in manifest["works"])
        return self._manifests[version]

    def _publish(self, record: dict[str, object]) -> None:
        self.producer.produce(self.serde, {"model_version": record["model_version"]}, record)
        if self.producer.flush(30):
            raise RuntimeError("model registry record not delivered")
        self.registry.versions[str(record["model_version"])] = dict(record)


def model_card(record: dict[str, object], result: dict[str, object], versions: dict[str, dict[str, object]]) -> str:
    """The card of a retrained version: what it was trained on, and every version's status."""
    losses, held_out = result["losses"], result["held_out_losses"]
    assert isinstance(losses, list) and isinstance(held_out, list)
    return (f"# Model card: {record['model_id']} {record['model_version']}\n\n"
            f"Retrained by `inference.retrainer` after a withdrawal of training consent; it replaces "
            f"`{record['replaces']}`. Same architecture, data pipeline and seed as the version built into the "
            f"image (see services/inference/model/MODEL_CARD.md), trained on the {result['works']} works (4/4, "
            f"every tenth held out) whose every rights holder grants `ai_training` in the consent snapshot "
            f"`consent_snapshot.json` (SHA-256 `{record['consent_snapshot_sha256']}`). Training loss "
            f"{losses[0]:.3f} → {losses[-1]:.3f}, held-out {held_out[-1]:.3f}.\n\n"
            f"## Versions\n\n{versions_table(versions)}")


def main() -> None:
    from kit.logs import configure_logging
    from kit.observability import HealthServer

    configure_logging(SERVICE)
    kafka = KafkaSettings.from_env()
    limit = os.environ.get("ENTRAIN_RETRAINER_LIMIT")
    retrainer = Retrainer(kafka, store_from_env(), Producer(kafka, SERVICE),
                          epochs=int(os.environ.get("ENTRAIN_RETRAINER_EPOCHS", "18")),
                          limit=int(limit) if limit else None)
    health = HealthServer.for_service(ServiceSettings.from_env("retrainer", 9106)).start()
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    started = False
    health.add_ready_check("registry_caught_up", lambda: started)
    retrainer.start()
    started = True
    poll_s = float(os.environ.get("ENTRAIN_RETRAINER_POLL_S", "1"))
    while not stopping:
        retrainer.step()
        time.sleep(poll_s)
    health.stop()


if __name__ == "__main__":
    main()

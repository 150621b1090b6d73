"""Withdrawal of training consent on the real broker: the model trained on the holder's works
stops generating at once, the retrainer retires it (recorded, with the reason) and trains a
replacement without those works, and inference switches to it."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY
from tests.integration.inference.test_inference_service import grant_everyone, request
from tests.kafka_helpers import read_all

from inference.catalog import load_catalog
from inference.engine import Engine
from inference.registry import ModelRegistry, unpack
from inference.retrainer import Retrainer
from inference.service import InferenceService
from kit.consumer import Record
from kit.producer import Producer
from kit.serde import TopicSerde
from kit.settings import KafkaSettings
from kit.store import FileStore


def as_record(value: dict[str, Any]) -> Record:
    return Record("soundtrack.requests.v1", 0, 0, value["requested_at"], {"listener_id": value["listener_id"]}, value)


def refused() -> float:
    return REGISTRY.get_sample_value("entrain_inference_requests_refused_total") or 0.0


def test_a_training_withdrawal_retires_the_model_and_a_retrained_version_takes_over(isolated: KafkaSettings,
                                                                                    tmp_path: Path) -> None:
    producer = Producer(isolated, "test")
    consent = TopicSerde.for_topic("catalog.consent.v1", isolated)
    grant_everyone(producer, consent, int(time.time() * 1000) - 60_000)
    assert producer.flush(30) == 0
    store = FileStore(tmp_path / "store")
    engine = Engine()
    service = InferenceService(isolated, engine, store, Producer(isolated, "inference"), ModelRegistry(isolated),
                               tmp_path / "models")
    retrainer = Retrainer(isolated, store, Producer(isolated, "inference"), epochs=1, limit=30)
    retrainer.start()  # records the built-in version as CURRENT
    builtin = engine.model_version
    assert retrainer.registry.versions[builtin]["status"] == "CURRENT"

    assert service.handle([as_record(request(0))]) == [None]
    # A holder of works the model was trained on withdraws training consent (generation stays granted).
    trained = {w.work_id: w for w in load_catalog() if w.work_id in engine.trained_works}
    holder = sorted(trained[sorted(trained)[0]].rights_holders)[0]
    their_works = {w for w, work in trained.items() if holder in work.rights_holders}
    now = int(time.time() * 1000)
    producer.produce(consent, {"rights_holder_id": holder, "work_id": None},
                     {"rights_holder_id": holder, "work_id": None, "ai_training": False, "ai_generation": True,
                      "likeness": False, "effective_from": now - 1000, "updated_at": now,
                      "change_id": str(uuid.uuid4())})
    assert producer.flush(30) == 0
    time.sleep(1)

    before = refused()
    assert service.handle([as_record(request(1))]) == [None]  # not the request's fault: refused, counted
    assert refused() == before + 1

    started = time.monotonic()
    new_version = retrainer.step()
    print(f"retrained in {time.monotonic() - started:.1f} s (1 epoch, 30 works)")
    assert new_version is not None and new_version != builtin
    registry = retrainer.registry.versions
    assert registry[builtin]["status"] == "RETIRED" and holder in registry[builtin]["reason"]
    assert registry[new_version]["status"] == "CURRENT" and registry[new_version]["replaces"] == builtin
    assert retrainer.step() is None  # the new version has none of the holder's works: nothing more to do

    assert service.handle([as_record(request(2))]) == [None]
    assert service.engine.model_version == new_version
    assert not their_works & service.engine.trained_works
    generated = TopicSerde.for_topic("soundtrack.segments.generated.v1", isolated)
    segments = [generated.decode_value(m.value()) for m in read_all(isolated, generated.topic, 2)]
    assert [s["provenance"]["model_version"] for s in segments] == [builtin, new_version]
    assert not their_works & {i["work_id"] for i in segments[1]["provenance"]["influences"]}

    # Recorded: the registry topic holds both, and the new version's model card says why.
    later = ModelRegistry(isolated)
    later.refresh(until_caught_up_s=20)
    assert later.retired(builtin) is not None and later.current()["model_version"] == new_version  # type: ignore[index]
    card_dir = unpack(store.get(registry[new_version]["artifact_uri"]), registry[new_version]["artifact_sha256"],
                      tmp_path / "card")
    card = (card_dir / "MODEL_CARD.md").read_text()
    assert f"`{builtin}` | retired" in card and holder in card and f"`{new_version}` | current" in card
    assert (card_dir / "consent_snapshot.json").exists()

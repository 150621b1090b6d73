"""The model registry: inference.models.v1 (compacted, one record per model version).

A version is CURRENT (it may generate) or RETIRED (never again, with the reason). Inference
generates with the newest CURRENT version; the retrainer (``inference.retrainer``) retires
versions whose training consent ended and publishes their replacements. A version's artifact
(weights, profiles, training manifest, version, consent snapshot, model card) is a gzipped tar
in the segment store; the version built into the image (services/inference/model) has none.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import time
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from kit.consumer import is_partition_eof
from kit.serde import DecodeError, TopicSerde
from kit.settings import KafkaSettings

TOPIC = "inference.models.v1"
ARTIFACT_FILES = ("weights.pt", "profiles.json", "training_manifest.json", "version.json", "consent_snapshot.json",
                  "MODEL_CARD.md", "copy_guard.json", "harmony.json", "conditioning.json")
OPTIONAL_FILES = {"consent_snapshot.json", "MODEL_CARD.md", "copy_guard.json", "harmony.json",  # old versions lack
                  "conditioning.json"}
REQUIRED_FILES = frozenset(ARTIFACT_FILES) - OPTIONAL_FILES
MAX_ARTIFACT_BYTES = 256 * 1024 * 1024  # unpacked; the demo model is about 3 MB


def pack(model_dir: Path) -> bytes:
    """A model directory as a deterministic gzipped tar (sorted names, zeroed times and owners)."""
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:  # no time in the gzip header
        for name in ARTIFACT_FILES:
            path = model_dir / name
            if not path.exists():
                continue
            data = path.read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def unpack(data: bytes, sha256: str, dest: Path) -> Path:
    """Check the artifact's SHA-256, then extract its files into ``dest`` (which must not exist):
    only the known names, each once, regular files, at most MAX_ARTIFACT_BYTES in all, and the
    training manifest must match the hash in version.json."""
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError("model artifact does not match its SHA-256")
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        if len(set(names)) != len(names) or not set(names) <= set(ARTIFACT_FILES) or not set(names) >= REQUIRED_FILES:
            raise ValueError(f"a model artifact holds {sorted(names)}, not the model files")
        if any(not m.isfile() for m in members) or sum(m.size for m in members) > MAX_ARTIFACT_BYTES:
            raise ValueError("a model artifact holds something other than small regular files")
        dest.mkdir(parents=True)
        for member in members:
            source = tar.extractfile(member)
            assert source is not None
            (dest / member.name).write_bytes(source.read(member.size + 1)[: member.size])
    version = json.loads((dest / "version.json").read_text())
    manifest_sha = hashlib.sha256((dest / "training_manifest.json").read_bytes()).hexdigest()
    if manifest_sha != version["training_manifest_sha256"]:
        raise ValueError("the artifact's training manifest does not match its version.json")
    return dest


def manifest_of(model_dir: Path) -> dict[str, Any]:
    return dict(json.loads((model_dir / "training_manifest.json").read_text()))


def record_for(model_dir: Path, status: str, reason: str | None, artifact: tuple[str, str] | None,
               replaces: str | None = None, changed_at: int | None = None) -> dict[str, Any]:
    """The registry value of the version in ``model_dir``."""
    version = json.loads((model_dir / "version.json").read_text())
    manifest = manifest_of(model_dir)
    return {"model_id": version["model_id"], "model_version": version["model_version"], "status": status,
            "reason": reason, "artifact_uri": artifact[0] if artifact else None,
            "artifact_sha256": artifact[1] if artifact else None,
            "training_manifest_sha256": version["training_manifest_sha256"],
            "consent_snapshot_sha256": manifest["consent_snapshot_sha256"], "trained_works": len(manifest["works"]),
            "replaces": replaces, "changed_at": int(time.time() * 1000) if changed_at is None else changed_at}


class ModelRegistry:
    """Follows inference.models.v1 from the beginning: the latest record of every version."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self.serde = TopicSerde.for_topic(TOPIC, kafka)
        self.versions: dict[str, dict[str, Any]] = {}
        self._consumer = Consumer({**kafka.client_config(), "group.id": "inference-model-registry",
                                   "enable.auto.commit": False, "enable.partition.eof": True,
                                   "isolation.level": "read_committed"})
        partitions = self._consumer.list_topics(self.serde.topic, timeout=30).topics[self.serde.topic].partitions
        self._pending = set(partitions)
        self._consumer.assign([TopicPartition(self.serde.topic, p, OFFSET_BEGINNING) for p in partitions])

    def refresh(self, until_caught_up_s: float = 0.0) -> None:
        """Apply what has arrived; with ``until_caught_up_s``, first read to the topic's end."""
        deadline = time.monotonic() + until_caught_up_s
        while True:
            waiting = bool(self._pending) and time.monotonic() < deadline
            batch = self._consumer.consume(500, 0.2 if waiting else 0)
            for msg in batch:
                if msg.error() is not None:
                    if is_partition_eof(msg):
                        self._pending.discard(msg.partition())
                    continue
                try:
                    value = self.serde.decode_value(msg.value())
                except DecodeError:
                    continue
                if value is not None:
                    self.versions[value["model_version"]] = value
            if not batch and not waiting:
                return

    def retired(self, version: str) -> str | None:
        """Why ``version`` was retired, or None if it was not."""
        record = self.versions.get(version)
        return (record["reason"] or "retired") if record and record["status"] == "RETIRED" else None

    def current(self) -> dict[str, Any] | None:
        """The newest CURRENT version."""
        live = [r for r in self.versions.values() if r["status"] == "CURRENT"]
        return max(live, key=lambda r: (r["changed_at"], r["model_version"])) if live else None

    def close(self) -> None:
        self._consumer.close()


def versions_table(versions: dict[str, dict[str, Any]]) -> str:
    """The model card's versions table, newest first."""
    rows = ["| version | status | since | why |", "|---|---|---|---|"]
    for r in sorted(versions.values(), key=lambda r: -r["changed_at"]):
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(r["changed_at"] / 1000))
        rows.append(f"| `{r['model_version']}` | {r['status'].lower()} | {since} | {r['reason'] or ''} |")
    return "\n".join(rows) + "\n"


def main() -> None:
    """python -m inference.registry: the registry's versions table."""
    registry = ModelRegistry(KafkaSettings.from_env())
    registry.refresh(until_caught_up_s=30)
    registry.close()
    print(versions_table(registry.versions), end="")


if __name__ == "__main__":
    main()

"""Model artifacts: packed deterministically, unpacked only when they are exactly a model."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from inference.registry import pack, record_for, unpack, versions_table
from inference.train import MODEL_DIR


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_packed_model_unpacks_to_the_same_files(tmp_path: Path) -> None:
    data = pack(MODEL_DIR)
    assert pack(MODEL_DIR) == data  # deterministic: the same version packs to the same bytes
    folder = unpack(data, sha(data), tmp_path / "model")
    for name in ("weights.pt", "profiles.json", "training_manifest.json", "version.json", "MODEL_CARD.md",
                 "copy_guard.json", "harmony.json", "conditioning.json"):
        assert (folder / name).read_bytes() == (MODEL_DIR / name).read_bytes()
    record = record_for(folder, "CURRENT", "test", None, changed_at=0)
    assert record["trained_works"] == 294 and record["model_version"] == "1.0.0+consent.7446e691"
    assert "`1.0.0+consent.7446e691` | current | 1970-01-01" in versions_table({record["model_version"]: record})


def tar_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_anything_but_a_model_is_refused(tmp_path: Path) -> None:
    good = {n: (MODEL_DIR / n).read_bytes() for n in ("weights.pt", "profiles.json", "training_manifest.json",
                                                       "version.json")}
    cases = {
        "escape": {**good, "../../etc/passwd": b"x"},
        "missing": {k: v for k, v in good.items() if k != "weights.pt"},
        "tampered manifest": {**good, "training_manifest.json": good["training_manifest.json"] + b" "},
    }
    for n, (name, files) in enumerate(cases.items()):
        data = tar_of(files)
        with pytest.raises(ValueError):
            unpack(data, sha(data), tmp_path / f"case-{n}")
        assert not (tmp_path.parent / "etc").exists(), name
    data = tar_of(good)
    with pytest.raises(ValueError, match="SHA-256"):
        unpack(data, "0" * 64, tmp_path / "wrong-sha")
    unpack(data, sha(data), tmp_path / "ok")

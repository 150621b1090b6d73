"""Detection for everyone: any audio file in, a verdict with payload and provenance out.

CLI:  python -m watermark.detector FILE [FILE ...]   (JSON per file; exit 0 all read, 2 on a bad file)
HTTP: POST /v1/detect with the file as the body (served by the watermark service, port
      ENTRAIN_WATERMARK_DETECT_PORT, default 8084). 413 over the size limit, 422 for a
      file that is not decodable audio or is too short, with the reason.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from watermark.audio import decode_bytes
from watermark.keys import KeyRing
from watermark.registry import Registry
from watermark.scheme import DESIGN_FPR, detect

MAX_UPLOAD_BYTES = 64 * 1024 * 1024


def report(data: bytes, keys: KeyRing, registry: Registry | None) -> dict[str, Any]:
    """Decode and detect; raises AudioError for files that are not usable audio."""
    audio, rate = decode_bytes(data)
    started = time.perf_counter()
    found = detect(audio, rate, list(keys.keys))
    out: dict[str, Any] = {
        "detected": found.detected,
        "confidence": round(found.confidence, 12) if found.detected else 0.0,
        "score": round(found.score, 3),
        "designed_false_positive_rate": DESIGN_FPR,
        "duration_s": round(len(audio) / rate, 3),
        "detect_ms": round((time.perf_counter() - started) * 1000, 1),
        "key_id": found.key_id,
        "payload_hex": f"{found.payload:08x}" if found.payload is not None else None,
        "segment_id": None,
        "provenance": None,
    }
    if found.detected and found.key_id is not None and registry is not None:
        records = registry.lookup(found.key_id, out["payload_hex"])
        if len(records) == 1:
            out["segment_id"] = records[0]["segment_id"]
            out["provenance"] = records[0]
        elif records:
            out["candidates"] = [r["segment_id"] for r in records]  # 32-bit payload collision
    return out


def http_app(keys: KeyRing, registry: Registry | None) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from watermark.scheme import AudioError

    async def detect_endpoint(request: Request) -> JSONResponse:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_UPLOAD_BYTES:
            return JSONResponse({"error": f"file larger than {MAX_UPLOAD_BYTES} bytes"}, status_code=413)
        body = bytearray()
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > MAX_UPLOAD_BYTES:
                return JSONResponse({"error": f"file larger than {MAX_UPLOAD_BYTES} bytes"}, status_code=413)
        try:
            return JSONResponse(report(bytes(body), keys, registry))
        except AudioError as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)

    return Starlette(routes=[Route("/v1/detect", detect_endpoint, methods=["POST"])])


def main(argv: list[str] | None = None) -> int:
    from watermark.scheme import AudioError

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    keys = KeyRing.from_env()
    registry = Registry()
    status = 0
    for path in args.files:
        try:
            result: dict[str, Any] = {"file": str(path), **report(path.read_bytes(), keys, registry)}
        except (AudioError, OSError) as exc:
            result, status = {"file": str(path), "error": str(exc)}, 2
        print(json.dumps(result))
    return status


if __name__ == "__main__":
    sys.exit(main())

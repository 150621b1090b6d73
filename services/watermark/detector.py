"""Detection for everyone: any audio file in, a verdict with payload and provenance out.

CLI:  python -m watermark.detector FILE [FILE ...]   (JSON per file; exit 0 all read, 2 on a bad file)
      Every file is scanned in 3.5 s windows (and read whole too up to 12 s): every segment in it is listed.
HTTP: POST /v1/detect with the file as the body and any Entrain API key (Authorization:
      Bearer <key>; served by the watermark service, port ENTRAIN_WATERMARK_DETECT_PORT,
      default 8084). 401 without a valid key, 429 over DETECTIONS_PER_S per key (a detection
      costs one token per started AUDIO_S_PER_TOKEN seconds of audio: a long file pays for the
      CPU it takes), 413 over the size limit, 422 for a file that is not decodable audio, is too
      long once decoded (checked from its header before decoding) or too short, with the reason.
      Decoding and detection run in a worker thread, off the event loop.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kit.audio import AudioError, decode_bytes
from kit.auth import AuthError, KeyStore
from kit.http import error_handlers
from kit.ratelimit import RateLimiter
from kit.settings import KafkaSettings
from watermark.keys import KeyRing
from watermark.registry import RegistryIndex
from watermark.scheme import DESIGN_FPR, detect

MAX_UPLOAD_BYTES = 64 * 1024 * 1024
DETECTIONS_PER_S, DETECTION_BURST = 5.0, 20.0  # per API key: detection costs CPU
AUDIO_S_PER_TOKEN = 12.0


WINDOW_S, WINDOW_HOP_S = 3.5, 1.5  # segments restart the mark's block, so a stream is scanned in windows
LONG_FILE_S = 12.0  # up to this a file is also read as one window (a single clip: all its blocks)


def windows_of(audio: Any, rate: int) -> list[tuple[float, Any]]:
    """The analysis windows of a file, as (offset in s, audio): the whole file when it is at most
    LONG_FILE_S, and WINDOW_S windows every WINDOW_HOP_S (the last one ending with the file) when it
    is longer than WINDOW_S. A stream's segments are 2-4.3 s long and each restarts the mark's block
    (1.86 s), so a window holding several of them reads each less well. A 3.5 s window every 1.5 s
    holds every 2 s of the file whole, so every segment's first block lies in one window, and what
    else that window holds (1.64 s at most) is shorter than a block, so no neighbour's whole block
    competes with it there. (4 s every 2 s named 0.990 of a delivered stream's excerpted segments in
    `make bench-watermark`, 3.5 s every 1.5 s 0.998.)"""
    windows = []
    size, step = int(WINDOW_S * rate), int(WINDOW_HOP_S * rate)
    if len(audio) > size:
        starts = list(range(0, len(audio) - size + 1, step))
        if starts[-1] + size < len(audio):
            starts.append(len(audio) - size)
        windows += [(i / rate, audio[i:i + size]) for i in starts]
    if len(audio) <= LONG_FILE_S * rate:  # last: a segment's first_seen_s comes from a window that holds it
        windows.append((0.0, audio))
    return windows


def report(data: bytes, keys: KeyRing, registry: RegistryIndex | None,
           charge: Callable[[float], None] | None = None) -> dict[str, Any]:
    """Decode and detect; raises AudioError for files that are not usable audio. ``charge`` is
    called with the decoded duration before detection starts (it may raise to refuse).

    The file is read in the windows of ``windows_of``; every segment found is listed, and the
    designed false-positive rate is per window, so the file's is that times the number of windows."""
    audio, rate = decode_bytes(data)
    started = time.perf_counter()
    duration = len(audio) / rate
    if charge is not None:
        charge(duration)
    windows = windows_of(audio, rate)
    found: dict[tuple[str, int], dict[str, Any]] = {}
    best = None
    for offset_s, window in windows:
        result = detect(window, rate, list(keys.keys))
        if best is None or result.score > best.score:
            best = result
        if result.detected and result.key_id is not None and result.payload is not None:
            hit = found.setdefault((result.key_id, result.payload), {
                "key_id": result.key_id, "payload_hex": f"{result.payload:08x}", "first_seen_s": round(offset_s, 2),
                "confidence": 0.0, "read_in": result.domain, "segment_id": None, "provenance": None})
            hit["confidence"] = max(hit["confidence"], round(result.confidence, 12))
    for hit in found.values():
        records = registry.lookup(hit["key_id"], hit["payload_hex"]) if registry is not None else []
        if len(records) == 1:
            hit["segment_id"], hit["provenance"] = records[0]["segment_id"], records[0]
        elif records:
            hit["candidates"] = [r["segment_id"] for r in records]  # a 32-bit payload collision
    assert best is not None
    hits = sorted(found.values(), key=lambda h: h["first_seen_s"])
    top = max(hits, key=lambda h: h["confidence"]) if hits else None
    return {
        "detected": bool(hits),
        "confidence": top["confidence"] if top else 0.0,
        "score": round(best.score, 3),
        "designed_false_positive_rate": DESIGN_FPR * len(windows),
        "duration_s": round(duration, 3),
        "windows": len(windows),
        "detect_ms": round((time.perf_counter() - started) * 1000, 1),
        "key_id": top["key_id"] if top else None,
        "payload_hex": top["payload_hex"] if top else None,
        "segment_id": top["segment_id"] if top else None,
        "provenance": top["provenance"] if top else None,
        "segments": hits,
    }


def http_app(keys: KeyRing, registry: RegistryIndex | None, api_keys: KeyStore,
             limiter: RateLimiter | None = None) -> Any:
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    limiter = RateLimiter(DETECTIONS_PER_S, DETECTION_BURST) if limiter is None else limiter

    async def detect_endpoint(request: Request) -> JSONResponse:
        try:
            principal = api_keys.authenticate(request.headers.get("authorization"))
        except AuthError as exc:
            return JSONResponse({"error": exc.reason}, status_code=exc.status)
        if limiter.take(principal.key_id, 1, int(time.time() * 1000)):
            return JSONResponse({"error": f"at most {limiter.rate:g} detections/s per API key"}, status_code=429)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_UPLOAD_BYTES:
            return JSONResponse({"error": f"file larger than {MAX_UPLOAD_BYTES} bytes"}, status_code=413)
        body = bytearray()
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > MAX_UPLOAD_BYTES:
                return JSONResponse({"error": f"file larger than {MAX_UPLOAD_BYTES} bytes"}, status_code=413)
        def charge(duration_s: float) -> None:  # the first token was taken above
            extra = max(0, math.ceil(duration_s / AUDIO_S_PER_TOKEN) - 1)
            if extra and limiter.take(principal.key_id, extra, int(time.time() * 1000)):
                raise Overdrawn(f"{duration_s:.0f} s of audio costs {extra + 1} detections; at most "
                                f"{limiter.rate:g}/s per API key")

        try:
            return JSONResponse(await run_in_threadpool(report, bytes(body), keys, registry, charge))
        except AudioError as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
        except Overdrawn as exc:
            return JSONResponse({"error": str(exc)}, status_code=429)

    return Starlette(exception_handlers=error_handlers(),
                     routes=[Route("/v1/detect", detect_endpoint, methods=["POST"])])


class Overdrawn(Exception):
    """A detection would cost more than the caller's rate limit has left."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    keys = KeyRing.from_env()
    registry = RegistryIndex(KafkaSettings.from_env()).start()
    if not registry.wait(60):
        print("the provenance registry (watermark.registry.v1) was not read to its end within 60 s; "
              "segments registered late may show no provenance", file=sys.stderr)
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

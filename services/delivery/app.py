"""Soundtrack delivery: soundtrack.segments.v1 -> each listener's live playlist over HTTP.

``python -m delivery`` (port ENTRAIN_DELIVERY_PORT, default 8085). A reader
thread follows soundtrack.segments.v1 (every partition, from ENTRAIN_DELIVERY_LOOKBACK_S
ago) into in-memory playlists; the HTTP side serves them. Every listener endpoint takes
``Authorization: Bearer <listener token>`` (minted by ingest for the app's backend,
verified here with ingest's public keys) and serves only the token's listener; a
``user_id`` that names anyone else is 403. Audio URLs are signed, bound to the listener
and expire, so an HLS player or a CDN can fetch them without a token.

  GET  /                                  the listener page (static; it holds no secret)
  GET  /v1/playlist[?session_id=S]        JSON: the newest (or named) session's segments, target tempo
  GET  /v1/playlist.m3u8[?session_id=S]   HLS (v7, fMP4) live media playlist: the AAC renditions
  GET  /v1/audio/{sha256}.wav?l&exp&sig   watermarked master (signed URL handed out in the playlist)
  GET  /v1/audio/{sha256}.m4s|.mp4?...    the AAC fragment / initialisation segment (signed likewise)
  POST /v1/underruns                      the player reports it ran dry {"segment_id"}
  GET  /v1/me/export                      JSON: everything Entrain holds about the listener (delivery.export)
  GET  /healthz /readyz /metrics
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
import yaml
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from delivery.export import Exporter
from delivery.playlists import Entry, Playlists, hls_media_playlist, requested_at
from kit.auth import AuthError, Pseudonymizer, pseudonymizer_from_env
from kit.consumer import is_partition_eof
from kit.http import error_handlers
from kit.media import MIME_CODEC
from kit.ratelimit import RateLimiter
from kit.serde import DecodeError, TopicSerde
from kit.settings import KafkaSettings
from kit.store import SegmentStore, StoreError, store_from_env
from kit.tokens import Listener, TokenVerifier, bearer_credential

log = structlog.get_logger()
SERVICE = "soundtrack-delivery"
SEGMENTS, ERASURES, ADMISSIONS = "soundtrack.segments.v1", "listener.erasures.v1", "soundtrack.admissions.v1"
PAGE = Path(__file__).with_name("web") / "index.html"
OPENAPI_PATH = Path(__file__).with_name("openapi.yaml")
URL_TTL_S = 3600
MAX_ERASED_REMEMBERED = 100_000  # erasures whose in-flight segments are still dropped
MAX_REPORT_BYTES = 4096
RATE_PER_LISTENER, BURST_PER_LISTENER = 5.0, 20.0  # requests/s; a player polls about once a segment
EXPORTS_PER_MINUTE, EXPORT_BURST = 1.0, 2.0  # an export reads days of the listener's partitions
EXPORTS_AT_ONCE = 2  # per process, whoever asks: many listeners' exports cannot exhaust the broker or memory

UNDERRUNS = Counter("entrain_soundtrack_buffer_underruns_total",
                    "Segments that reached the playlist after their deadline (server) or players that ran dry "
                    "(client).", ["source"])
DELIVERED = Counter("entrain_soundtrack_segments_delivered_total", "Watermarked segments added to playlists.")
SLACK = Histogram("entrain_soundtrack_segment_slack_seconds",
                  "Time between a segment reaching the playlist and its deadline (0 or less: late).",
                  buckets=(-1, 0, 0.5, 1, 2, 4, 8, 16, 32))
REPLACEMENTS = Counter("entrain_soundtrack_segments_replaced_total",
                       "Segments that replaced a replanned position's earlier version, by whether they came "
                       "before that position's deadline.", ["outcome"])
PLAYLISTS = Gauge("entrain_soundtrack_playlists", "Listeners with a live playlist in this process.")
HTTP = Counter("entrain_soundtrack_http_requests_total", "Delivery HTTP requests.", ["route", "status"])


class SegmentFeed:
    """Follows soundtrack.segments.v1 (and listener.erasures.v1, which empties a listener's
    playlist, and soundtrack.admissions.v1, each listener's latest admission decision) into
    ``playlists`` in a daemon thread."""

    def __init__(self, kafka: KafkaSettings, playlists: Playlists, lookback_s: float,
                 on_entry: Callable[[Entry], None] | None = None) -> None:
        self.serde = TopicSerde.for_topic(SEGMENTS, kafka)
        self.erasures = TopicSerde.for_topic(ERASURES, kafka)
        self.admissions = TopicSerde.for_topic(ADMISSIONS, kafka)
        self.decisions: OrderedDict[str, dict[str, Any]] = OrderedDict()  # listener -> latest admission decision
        self.playlists, self.on_entry = playlists, on_entry
        self.lock = threading.Lock()
        self._erased: OrderedDict[str, int] = OrderedDict()  # listener -> erasure time, newest last
        self.caught_up = threading.Event()
        self._stop = threading.Event()
        self._consumer = Consumer({**kafka.client_config(), "group.id": f"{SERVICE}-reader",
                                   "enable.auto.commit": False, "enable.partition.eof": True,
                                   "isolation.level": "read_committed"})
        since = int((time.time() - lookback_s) * 1000)
        wanted = [TopicPartition(name, p, since) for name in (self.serde.topic, self.erasures.topic,
                                                               self.admissions.topic)
                  for p in self._consumer.list_topics(name, timeout=30).topics[name].partitions]
        starts = self._offsets_for_times(wanted, deadline=time.monotonic() + 30)
        self._pending = {(tp.topic, tp.partition) for tp in starts if tp.offset >= 0}  # -1: nothing to catch up on
        if not self._pending:
            self.caught_up.set()
        self._consumer.assign(starts)
        self._thread = threading.Thread(target=self._run, name="segment-feed", daemon=True)

    def _offsets_for_times(self, wanted: list[TopicPartition], deadline: float) -> list[TopicPartition]:
        while True:  # retriable errors (a leader being elected) clear within seconds
            try:
                return list(self._consumer.offsets_for_times(wanted, timeout=max(1.0, deadline - time.monotonic())))
            except KafkaException as exc:
                error = exc.args[0]
                # librdkafka does not flag a stale leader as retriable here, though it clears like one
                transient = error.retriable() or error.code() in (KafkaError.NOT_LEADER_FOR_PARTITION,
                                                                  KafkaError.LEADER_NOT_AVAILABLE)
                if not transient or time.monotonic() > deadline:
                    raise
                log.warning("offsets_retry", reason=str(exc))
                time.sleep(0.5)

    def start(self) -> SegmentFeed:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                msg = self._consumer.poll(0.5)
                if msg is None:
                    continue
                if msg.error() is not None:
                    if is_partition_eof(msg):
                        self._pending.discard((msg.topic(), int(msg.partition() or 0)))
                        if not self._pending:
                            self.caught_up.set()
                    continue
                if msg.topic() == self.erasures.topic:
                    self._erase(msg)
                    continue
                if msg.topic() == self.admissions.topic:
                    self._admission(msg)
                    continue
                try:
                    segment = self.serde.decode_value(msg.value())
                except DecodeError as exc:
                    log.warning("segment_undecodable", reason=str(exc), partition=msg.partition(),
                                offset=msg.offset())
                    continue
                if segment is None:
                    continue
                _, produced_ms = msg.timestamp()  # when it became available, also when replayed after a restart
                self.add(segment, produced_ms if produced_ms > 0 else int(time.time() * 1000))
        finally:
            self._consumer.close()

    def _erase(self, msg: Any) -> None:
        try:
            listener = self.erasures.decode_key(msg.key())["listener_id"]
            value = self.erasures.decode_value(msg.value())
            if value is None:
                raise DecodeError("erasure record is a tombstone")
        except DecodeError as exc:  # the soundtrack worker dead-letters it; nothing is erased
            log.warning("erasure_undecodable", reason=str(exc))
            return
        erased_at = max(int(value["requested_at"]), msg.timestamp()[1])
        with self.lock:
            dropped = self.playlists.forget(listener, until_ms=erased_at)
            self.decisions.pop(listener, None)
            # Segments generated before the erasure that are still on their way are dropped too.
            self._erased[listener] = erased_at
            self._erased.move_to_end(listener)
            while len(self._erased) > MAX_ERASED_REMEMBERED:
                self._erased.popitem(last=False)
        log.info("playlist_erased", listener_id=listener, segments=dropped)

    def _admission(self, msg: Any) -> None:
        try:
            value = self.admissions.decode_value(msg.value())
        except DecodeError as exc:
            log.warning("admission_undecodable", reason=str(exc), partition=msg.partition(), offset=msg.offset())
            return
        if value is None:
            return
        listener = value["listener_id"]
        with self.lock:
            if value["decided_at"] <= self._erased.get(listener, -1):
                return
            self.decisions[listener] = value
            self.decisions.move_to_end(listener)
            while len(self.decisions) > MAX_ERASED_REMEMBERED:
                self.decisions.popitem(last=False)

    def admission(self, listener: str, session_id: str | None, newest: Entry | None) -> dict[str, Any] | None:
        """The listener's latest admission decision, if it is about ``session_id``; without one, if
        it is newer than the newest segment (a refused new session has none of its own)."""
        decision = self.decisions.get(listener)
        if decision is None:
            return None
        if session_id is not None and decision["session_id"] != session_id:
            return None
        if session_id is None and newest is not None and decision["session_id"] != newest.segment["session_id"] \
                and decision["decided_at"] < requested_at(newest.segment):
            return None
        return {k: decision[k] for k in ("session_id", "decision", "retry_after_ms", "decided_at")}

    def add(self, segment: dict[str, Any], arrived_ms: int) -> None:
        with self.lock:
            if requested_at(segment) <= self._erased.get(segment["listener_id"], -1):
                return  # requested for a listener before they were erased (rendered before or after)
            entry = self.playlists.add(segment, arrived_ms)
            PLAYLISTS.set(len(self.playlists))
            decision = self.decisions.get(segment["listener_id"])
            if decision is not None and decision["session_id"] == segment["session_id"] \
                    and requested_at(segment) > decision["decided_at"]:
                del self.decisions[segment["listener_id"]]  # the session is served now (an ADMITTED can be missed)
        if entry is None:
            return
        DELIVERED.inc()
        if entry.replaces is not None:  # late or not, the version it replaces was there to play
            REPLACEMENTS.labels("late" if entry.late else "in_time").inc()
        else:
            SLACK.observe(entry.slack_ms / 1000)
            if entry.late:
                UNDERRUNS.labels("server").inc()
        if self.on_entry is not None:
            self.on_entry(entry)


class UrlSigner:
    """Audio URLs signed over (audio hash, listener, expiry): a leaked URL works for an hour and
    names whose playlist it came from; nothing in it can be changed without the secret."""

    def __init__(self, secret: bytes) -> None:
        self._key = hmac.new(secret, b"entrain-delivery-audio-urls-v2", hashlib.sha256).digest()

    def _sig(self, name: str, listener: str, expires: int) -> str:
        return hmac.new(self._key, f"{name}:{listener}:{expires}".encode(), hashlib.sha256).hexdigest()[:32]

    def sign(self, sha256: str, listener: str, now_s: float, extension: str = "wav") -> str:
        name, expires = f"{sha256}.{extension}", int(now_s) + URL_TTL_S
        return f"/v1/audio/{name}?l={listener}&exp={expires}&sig={self._sig(name, listener, expires)}"

    def check(self, name: str, listener: str, expires: str, sig: str, now_s: float) -> None:
        """Raises HttpError: 400 for a malformed URL, 403 for a wrong or expired signature (``name``
        is the audio's file name: digest and extension)."""
        if not (expires.isascii() and expires.isdigit() and len(expires) <= 12):
            raise HttpError(400, "exp must be epoch seconds (ASCII digits)")
        if not (listener.isascii() and len(listener) == 64 and all(c in HEX for c in listener)):
            raise HttpError(400, "l must be the listener id the playlist handed out")
        if not (sig.isascii() and hmac.compare_digest(self._sig(name, listener, int(expires)), sig)):
            raise HttpError(403, "audio URL is unsigned or tampered with; fetch the playlist again")
        if int(expires) < now_s:
            raise HttpError(403, "audio URL expired; fetch the playlist again")


HEX = frozenset("0123456789abcdef")
# What /v1/audio serves: the WAV master (the page), the AAC fragments and their init segment (HLS).
AUDIO_TYPES = {"wav": "audio/wav", "m4s": "audio/mp4", "mp4": "audio/mp4"}


async def read_limited(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it passes ``limit`` bytes, declared or chunked."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise HttpError(413, f"body larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HttpError(413, f"body larger than {limit} bytes")
    return bytes(body)


def create_app(verifier: TokenVerifier, pseudonymizer: Pseudonymizer, feed: SegmentFeed, store: SegmentStore,
               clock: Callable[[], float] = time.time,
               limiter: RateLimiter | None = None, exporter: Exporter | None = None,
               export_limiter: RateLimiter | None = None) -> Starlette:
    signer = UrlSigner(pseudonymizer.secret)
    limiter = RateLimiter(RATE_PER_LISTENER, BURST_PER_LISTENER) if limiter is None else limiter
    if export_limiter is None:
        export_limiter = RateLimiter(EXPORTS_PER_MINUTE / 60, EXPORT_BURST)
    exports_running = threading.BoundedSemaphore(EXPORTS_AT_ONCE)

    def limit(listener: str) -> None:
        if limiter.take(listener, 1, int(clock() * 1000)):
            raise HttpError(429, f"at most {limiter.rate:g} requests/s per listener; retry shortly")

    def listener_of(request: Request) -> Listener:
        listener = verifier.verify(bearer_credential(request.headers.get("authorization")), clock())
        limit(listener.listener_id)
        same_listener(listener, request.query_params.get("user_id"))
        return listener

    def same_listener(listener: Listener, user_id: object) -> None:
        """A request may repeat its own user id (older apps do), never name another listener."""
        if user_id is None:
            return
        if not isinstance(user_id, str) or not 0 < len(user_id) <= 128:
            raise HttpError(400, "user_id must be 1-128 characters (or omitted: the token names the listener)")
        if pseudonymizer.listener_id(user_id) != listener.listener_id:
            raise AuthError(403, "user_id names another listener than the token's")

    def session_entries(request: Request) -> tuple[Listener, list[Entry]]:
        listener = listener_of(request)
        with feed.lock:
            return listener, feed.playlists.session(listener.listener_id, request.query_params.get("session_id"))

    async def playlist(request: Request) -> Response:
        listener, entries = session_entries(request)
        with feed.lock:
            admission = feed.admission(listener.listener_id, request.query_params.get("session_id"),
                                       entries[-1] if entries else None)
        now = clock()
        # Replanned positions are listed as their newest version only for players that swap (the page);
        # others get the first version of each, as HLS does, so a listed segment never changes for them.
        revisions = request.query_params.get("revisions", "0")
        if revisions not in ("0", "1"):
            raise HttpError(400, "revisions must be 0 or 1")
        swaps = revisions == "1"
        segments = []
        for e in entries:
            seg = e.segment if swaps else e.listed
            segments.append({
                "segment_id": seg["segment_id"], "session_id": seg["session_id"], "sequence": seg["sequence"],
                "previous_segment_id": seg.get("previous_segment_id"),
                "url": signer.sign(seg["audio"]["sha256"], listener.listener_id, now),
                "duration_ms": seg["audio"]["duration_ms"], "params": seg["params"],
                "provenance": seg["provenance"], "watermark": seg["watermark"],
                "generated_at": seg["generated_at"], "requested_at": requested_at(seg), "deadline": seg["deadline"],
                "late": e.late if seg is e.segment else e.first_late,
                "replaces": e.replaces if swaps else None,
                "rendition": rendition_urls(seg, listener.listener_id, now),
            })
        tempo = segments[-1]["params"]["tempo_bpm"] if segments else None
        return JSONResponse({"segments": segments, "target_tempo_bpm": tempo, "server_time": int(now * 1000),
                             "admission": admission})

    def rendition_urls(segment: dict[str, Any], listener: str, now: float) -> dict[str, Any] | None:
        rendition = segment.get("rendition")
        if not rendition:
            return None
        return {"url": signer.sign(rendition["sha256"], listener, now, "m4s"),
                "init_url": signer.sign(rendition["init_sha256"], listener, now, "mp4"),
                "codecs": MIME_CODEC, "decode_time": rendition["decode_time"], "frames": rendition["frames"],
                "sample_rate_hz": rendition["sample_rate_hz"], "discontinuity": rendition["discontinuity"]}

    async def playlist_m3u8(request: Request) -> Response:
        listener, entries = session_entries(request)
        now = clock()
        body = hls_media_playlist(entries, lambda sha, ext: signer.sign(sha, listener.listener_id, now, ext))
        return Response(body, media_type="application/vnd.apple.mpegurl", headers={"Cache-Control": "no-store"})

    async def audio(request: Request) -> Response:
        sha, extension = request.path_params["sha256"], request.path_params["extension"]
        if len(sha) != 64 or any(c not in HEX for c in sha) or extension not in AUDIO_TYPES:
            raise HttpError(404, "no such audio")
        query = request.query_params
        signer.check(f"{sha}.{extension}", query.get("l", ""), query.get("exp", ""), query.get("sig", ""), clock())
        try:
            data = await run_in_threadpool(store.get_content, sha, extension)
        except StoreError:
            raise HttpError(404, "no such audio") from None
        # Content-addressed: the bytes behind a URL never change, so players and CDNs may keep them.
        return Response(data, media_type=AUDIO_TYPES[extension], headers={"Cache-Control": "private, max-age=3600"})

    async def underruns(request: Request) -> Response:
        listener = listener_of(request)
        raw = await read_limited(request, MAX_REPORT_BYTES)
        try:
            body = json.loads(raw)
        except ValueError:
            raise HttpError(400, "body is not valid JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("segment_id", ""), str):
            raise HttpError(400, 'body must be {"segment_id": "..."}')
        same_listener(listener, body.get("user_id"))
        UNDERRUNS.labels("client").inc()
        segment_id = "".join(c for c in body.get("segment_id", "")[:64] if c.isascii() and (c.isalnum() or c in "-_"))
        log.warning("client_underrun", listener_id=listener.listener_id, segment_id=segment_id)
        return JSONResponse({"recorded": True}, status_code=202)

    async def export(request: Request) -> Response:
        listener = listener_of(request)
        if exporter is None:
            raise HttpError(503, "exports are not configured on this delivery instance")
        if export_limiter.take(listener.listener_id, 1, int(clock() * 1000)):
            raise HttpError(429, f"at most {EXPORTS_PER_MINUTE:g} export a minute per listener; retry later")
        if not exports_running.acquire(blocking=False):
            raise HttpError(429, f"{EXPORTS_AT_ONCE} exports are running on this instance; retry in a minute")
        try:
            held = await run_in_threadpool(exporter.export, listener.listener_id)
        except (KafkaException, TimeoutError) as exc:  # the broker, not the caller: retry later
            log.warning("listener_export_failed", listener_id=listener.listener_id, error=str(exc))
            raise HttpError(503, "the export could not read every topic in time; retry in a minute") from None
        finally:
            exports_running.release()
        with feed.lock:
            playlist = [e.segment["segment_id"] for e in feed.playlists.entries(listener.listener_id)]
        log.info("listener_export", listener_id=listener.listener_id,
                 records=sum(len(t["records"]) for t in held["topics"].values()))
        return JSONResponse({**held, "token": {"subscription_tier": listener.subscription_tier,
                                               "territory": listener.territory, "app": listener.app_id},
                             "delivery_playlist": {"what": "segment ids in delivery's in-memory playlists",
                                                   "segment_ids": playlist}})

    async def page(request: Request) -> Response:
        return FileResponse(PAGE, media_type="text/html")

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        if not feed.caught_up.is_set():
            return JSONResponse({"status": "not ready", "failing": ["segment-feed"]}, status_code=503)
        return JSONResponse({"status": "ready"})

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    openapi = yaml.safe_load(OPENAPI_PATH.read_text())

    async def openapi_json(request: Request) -> Response:
        return JSONResponse(openapi)

    def route(path: str, endpoint: Callable[[Request], Any], name: str, methods: list[str] | None = None) -> Route:
        async def wrapped(request: Request) -> Response:
            try:
                response: Response = await endpoint(request)
            except AuthError as exc:
                response = JSONResponse({"error": exc.reason}, status_code=exc.status)
            except HttpError as exc:
                response = JSONResponse({"error": exc.reason}, status_code=exc.status)
            HTTP.labels(name, str(response.status_code)).inc()
            return response
        return Route(path, wrapped, methods=methods or ["GET"], name=name)

    unrouted = error_handlers(lambda status: HTTP.labels("unrouted", str(status)).inc())
    return Starlette(exception_handlers=unrouted, routes=[
        route("/", page, "page"),
        route("/v1/playlist", playlist, "playlist"),
        route("/v1/playlist.m3u8", playlist_m3u8, "playlist_m3u8"),
        route("/v1/audio/{sha256}.{extension}", audio, "audio"),
        route("/v1/underruns", underruns, "underruns", ["POST"]),
        route("/v1/me/export", export, "export"),
        route("/healthz", healthz, "healthz"),
        route("/readyz", readyz, "readyz"),
        route("/metrics", metrics, "metrics"),
        route("/openapi.json", openapi_json, "openapi"),
    ])


class HttpError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def main() -> None:
    import uvicorn

    from kit.logs import configure_logging

    configure_logging(SERVICE)
    verifier, pseudonymizer = TokenVerifier.from_env(os.environ), pseudonymizer_from_env(os.environ)
    kafka = KafkaSettings.from_env()
    feed = SegmentFeed(kafka, Playlists(), float(os.environ.get("ENTRAIN_DELIVERY_LOOKBACK_S", "3600"))).start()
    changelog = f"{os.environ.get('ENTRAIN_SOUNDTRACK_APP_ID', kafka.topic('soundtrack'))}-listeners-changelog"
    app = create_app(verifier, pseudonymizer, feed, store_from_env(), exporter=Exporter(kafka, changelog))
    uvicorn.run(app, host=os.environ.get("ENTRAIN_DELIVERY_HOST", "127.0.0.1"),
                port=int(os.environ.get("ENTRAIN_DELIVERY_PORT", "8085")), log_level="warning")
    feed.stop()


if __name__ == "__main__":
    main()

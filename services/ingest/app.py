"""Ingest's HTTP adapter: authentication, limits, validation, pseudonymisation, produce.

``create_app`` wires the pure parts (validation, security, limits) to Kafka
through ``Publisher``. Every error is JSON with a reason and the request id; no
stack trace reaches a client; no raw user id is logged or produced.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import structlog
import yaml
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ingest.limits import DedupWindow, RateLimiter
from ingest.publisher import Overloaded, Publisher, Unavailable
from ingest.security import AuthError, Principal
from ingest.settings import IngestSettings
from ingest.validation import Invalid, parse_consent, parse_erasure, parse_play, parse_telemetry
from kit.http import error_handlers
from kit.serde import TopicSerde
from kit.settings import KafkaSettings

OPENAPI_PATH = Path(__file__).with_name("openapi.yaml")
SERVICE = "ingest"

REQUESTS = Counter("entrain_ingest_requests_total", "HTTP requests by route and status.", ["route", "status"])
EVENTS = Counter("entrain_ingest_events_total", "Items in request bodies by kind and outcome.",
                 ["kind", "outcome"])
REQUEST_SECONDS = Histogram("entrain_ingest_request_seconds", "Time to answer a request, broker ack included.",
                            ["route"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))

log = structlog.get_logger()


class HttpError(Exception):
    def __init__(self, status: int, reason: str, retry_after_s: float | None = None, **extra: Any) -> None:
        super().__init__(reason)
        self.status, self.reason, self.retry_after_s, self.extra = status, reason, retry_after_s, extra


def json_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def create_app(settings: IngestSettings, kafka: KafkaSettings, clock: Callable[[], float] = time.time) -> Starlette:
    state: dict[str, Publisher] = {}
    serdes = {name: TopicSerde.for_topic(name, kafka)
              for name in ("listener.telemetry.v1", "listener.plays.v1", "catalog.consent.v1", "listener.erasures.v1")}
    dedup = {"telemetry": DedupWindow(settings.dedup_window_ms), "plays": DedupWindow(settings.dedup_window_ms)}
    limiter = RateLimiter(settings.rate_per_key, settings.burst_per_key)
    openapi = yaml.safe_load(OPENAPI_PATH.read_text())

    def now_ms() -> int:
        return int(clock() * 1000)

    async def read_json(request: Request) -> Any:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > settings.max_body_bytes:
            raise HttpError(413, f"body larger than {settings.max_body_bytes} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > settings.max_body_bytes:
                raise HttpError(413, f"body larger than {settings.max_body_bytes} bytes")
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise HttpError(400, f"body is not valid JSON: {exc}") from None

    def batch_of(body: Any, field: str, principal: Principal) -> list[Any]:
        if not isinstance(body, dict) or not isinstance(body.get(field), list):
            raise HttpError(400, f'body must be a JSON object with a "{field}" array')
        items: list[Any] = body[field]
        if not items:
            raise HttpError(400, f'"{field}" is empty')
        if len(items) > settings.max_batch:
            raise HttpError(413, f'"{field}" has {len(items)} items; at most {settings.max_batch} per request')
        wait_s = limiter.take(principal.key_id, len(items), now_ms())
        if wait_s:
            raise HttpError(429, f"rate limit of {settings.rate_per_key:g} items/s for this key exceeded",
                            retry_after_s=wait_s)
        return items

    async def ingest_batch(request: Request, field: str, kind: str, topic: str,
                           parse: Callable[[Any, int], Any], id_of: Callable[[Any], str]) -> Response:
        principal = settings.keys.authenticate(request.headers.get("authorization"))
        principal.require("listener-app")
        items = batch_of(await read_json(request), field, principal)
        received = now_ms()
        rejected, accepted, duplicates, ids = [], [], 0, set()
        for index, item in enumerate(items):
            try:
                event = parse(item, received)
            except Invalid as exc:
                rejected.append({"index": index, "field": exc.field, "reason": exc.reason})
                continue
            event_id = id_of(event)
            if event_id in ids or dedup[kind].seen(event_id, received):
                duplicates += 1
                continue
            ids.add(event_id)
            listener_id = settings.pseudonymizer.listener_id(event.app_user_id)
            accepted.append(({"listener_id": listener_id}, event.record(listener_id, received)))
        EVENTS.labels(kind, "rejected").inc(len(rejected))
        EVENTS.labels(kind, "duplicate").inc(duplicates)
        try:
            await state["publisher"].publish(serdes[topic], accepted)
        except Overloaded as exc:
            raise HttpError(429, "ingest is overloaded; nothing from this request was accepted",
                            retry_after_s=exc.retry_after_s) from None
        except Unavailable as exc:
            raise HttpError(503, f"{exc}; nothing from this request may be assumed accepted, retry",
                            retry_after_s=5) from None
        for _, value in accepted:
            dedup[kind].remember(value["event_id" if kind == "telemetry" else "play_id"], received)
        EVENTS.labels(kind, "accepted").inc(len(accepted))
        body = {"accepted": len(accepted), "duplicates": duplicates, "rejected": rejected}
        status = 422 if rejected and not accepted and not duplicates else 202
        return json_response(status, body)

    async def telemetry(request: Request) -> Response:
        return await ingest_batch(request, "events", "telemetry", "listener.telemetry.v1",
                                  lambda item, now: parse_telemetry(item, now, settings.telemetry_window),
                                  lambda e: e.event_id)

    async def plays(request: Request) -> Response:
        return await ingest_batch(request, "plays", "plays", "listener.plays.v1",
                                  lambda item, now: parse_play(item, now, settings.plays_window),
                                  lambda p: p.play_id)

    async def consent(request: Request) -> Response:
        rights_holder_id = request.path_params["rights_holder_id"]
        principal = settings.keys.authenticate(request.headers.get("authorization"))
        principal.may_change_consent_of(rights_holder_id)
        now = now_ms()
        try:
            parsed = parse_consent(rights_holder_id, await read_json(request), now, settings.max_future_ms)
        except Invalid as exc:
            raise HttpError(422, exc.reason, field=exc.field) from None
        change_id = str(uuid.uuid4())
        key = {"rights_holder_id": parsed.rights_holder_id, "work_id": parsed.work_id}
        try:
            await state["publisher"].publish(serdes["catalog.consent.v1"], [(key, parsed.record(change_id, now))])
        except Overloaded as exc:
            raise HttpError(429, "ingest is overloaded", retry_after_s=exc.retry_after_s) from None
        except Unavailable as exc:
            raise HttpError(503, str(exc), retry_after_s=5) from None
        log.info("consent_changed", rights_holder_id=parsed.rights_holder_id, work_id=parsed.work_id,
                 change_id=change_id, ai_generation=parsed.ai_generation, ai_training=parsed.ai_training)
        return json_response(202, {"change_id": change_id, "effective_from": parsed.effective_from})

    async def erasure(request: Request) -> Response:
        principal = settings.keys.authenticate(request.headers.get("authorization"))
        principal.require("listener-app")
        try:
            user_id = parse_erasure(await read_json(request))
        except Invalid as exc:
            raise HttpError(422, exc.reason, field=exc.field) from None
        listener_id, erasure_id = settings.pseudonymizer.listener_id(user_id), str(uuid.uuid4())
        record = {"erasure_id": erasure_id, "listener_id": listener_id, "requested_at": now_ms()}
        try:
            await state["publisher"].publish(serdes["listener.erasures.v1"], [({"listener_id": listener_id}, record)])
        except Overloaded as exc:
            raise HttpError(429, "ingest is overloaded", retry_after_s=exc.retry_after_s) from None
        except Unavailable as exc:
            raise HttpError(503, str(exc), retry_after_s=5) from None
        log.info("erasure_requested", listener_id=listener_id, erasure_id=erasure_id)
        return json_response(202, {"erasure_id": erasure_id})

    async def healthz(request: Request) -> Response:
        return json_response(200, {"status": "ok"})

    async def readyz(request: Request) -> Response:
        publisher = state.get("publisher")
        if publisher is None or not await asyncio.to_thread(publisher.producer.reachable, 2.0):
            return json_response(503, {"status": "not ready", "failing": ["kafka"]})
        return json_response(200, {"status": "ready"})

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    async def openapi_json(request: Request) -> Response:
        return json_response(200, openapi)

    def route(path: str, endpoint: Callable[[Request], Any], methods: list[str], name: str) -> Route:
        async def wrapped(request: Request) -> Response:
            request_id = request.headers.get("x-request-id", "")[:64] or uuid.uuid4().hex
            structlog.contextvars.bind_contextvars(request_id=request_id)
            started = time.perf_counter()
            try:
                response: Response = await endpoint(request)
            except AuthError as exc:
                response = json_response(exc.status, {"error": exc.reason, "request_id": request_id})
            except HttpError as exc:
                headers = {"Retry-After": str(max(1, round(exc.retry_after_s)))} if exc.retry_after_s else None
                response = json_response(exc.status, {"error": exc.reason, "request_id": request_id, **exc.extra},
                                         headers)
            except Exception:
                log.exception("request_failed", route=name)
                response = json_response(500, {"error": "internal error", "request_id": request_id})
            finally:
                structlog.contextvars.unbind_contextvars("request_id")
            response.headers["X-Request-Id"] = request_id
            REQUESTS.labels(name, str(response.status_code)).inc()
            REQUEST_SECONDS.labels(name).observe(time.perf_counter() - started)
            if response.status_code >= 500:
                log.warning("request_error", route=name, status=response.status_code)
            return response

        return Route(path, wrapped, methods=methods, name=name)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state["publisher"] = Publisher(kafka, SERVICE, settings.ack_timeout_s, settings.max_in_flight)
        log.info("ingest_started", bootstrap=kafka.bootstrap_servers)
        try:
            yield
        finally:
            state.pop("publisher").close()

    cors = Middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST", "PUT"],
                      allow_headers=["Authorization", "Content-Type", "X-Request-Id"], max_age=600)
    return Starlette(middleware=[cors], exception_handlers=error_handlers(
        lambda status: REQUESTS.labels("unrouted", str(status)).inc()), routes=[
        route("/v1/telemetry", telemetry, ["POST"], "telemetry"),
        route("/v1/plays", plays, ["POST"], "plays"),
        route("/v1/rights-holders/{rights_holder_id}/consent", consent, ["PUT"], "consent"),
        route("/v1/erasures", erasure, ["POST"], "erasure"),
        route("/healthz", healthz, ["GET"], "healthz"),
        route("/readyz", readyz, ["GET"], "readyz"),
        route("/metrics", metrics, ["GET"], "metrics"),
        route("/openapi.json", openapi_json, ["GET"], "openapi"),
    ], lifespan=lifespan)


def app_from_env() -> Starlette:
    """uvicorn factory: settings from the environment (each worker process calls it)."""
    from kit.logs import configure_logging

    configure_logging(SERVICE)
    return create_app(IngestSettings.from_env(), KafkaSettings.from_env())

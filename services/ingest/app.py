"""Ingest's HTTP adapter: authentication, limits, validation, pseudonymisation, produce.

``create_app`` wires the pure parts (validation, security, limits) to Kafka
through ``Publisher``. Every error is JSON with a reason and the request id; no
stack trace reaches a client; no raw user id is logged or produced.

Two kinds of caller: an app's *backend* with its listener-app API key, which may only
mint listener tokens (``POST /v1/tokens``); and the *listener's device* with such a token,
which may send telemetry and plays, erase and export for that one listener. Rights
holders and admins use their API keys (consent).
"""

from __future__ import annotations

import asyncio
import copy
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

from ingest.limits import DedupWindow
from ingest.publisher import Overloaded, Publisher, Unavailable
from ingest.settings import IngestSettings
from ingest.validation import (
    Invalid,
    claimed_user_id,
    parse_consent,
    parse_play,
    parse_telemetry,
    parse_token_request,
)
from kit.auth import AuthError, hash_key
from kit.http import error_handlers
from kit.ratelimit import RateLimiter
from kit.serde import TopicSerde
from kit.settings import KafkaSettings
from kit.tokens import Listener, bearer_credential

OPENAPI_PATH = Path(__file__).with_name("openapi.yaml")
SERVICE = "ingest"

REQUESTS = Counter("entrain_ingest_requests_total", "HTTP requests by route and status.", ["route", "status"])
EVENTS = Counter("entrain_ingest_events_total", "Items in request bodies by kind and outcome.",
                 ["kind", "outcome"])
TOKENS = Counter("entrain_ingest_tokens_issued_total", "Listener tokens minted for app backends.")
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
    limiter = RateLimiter(settings.rate_per_key, settings.burst_per_key)  # items per app
    app_limiter = RateLimiter(settings.rate_per_key, settings.burst_per_key)  # requests per app
    listener_limiter = RateLimiter(settings.rate_per_listener, settings.burst_per_listener)
    token_limiter = RateLimiter(settings.tokens_per_key_s, settings.tokens_per_key_s * 2)
    verifier = settings.tokens.verifier()
    openapi = yaml.safe_load(OPENAPI_PATH.read_text())

    def now_ms() -> int:
        return int(clock() * 1000)

    async def read_json(request: Request, allow_empty: bool = False) -> Any:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > settings.max_body_bytes:
            raise HttpError(413, f"body larger than {settings.max_body_bytes} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > settings.max_body_bytes:
                raise HttpError(413, f"body larger than {settings.max_body_bytes} bytes")
        if allow_empty and not body.strip():
            return {}
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise HttpError(400, f"body is not valid JSON: {exc}") from None

    def listener_of(request: Request) -> Listener:
        """The listener a request's token names; an API key here is refused (403)."""
        credential = bearer_credential(request.headers.get("authorization"))
        if credential.count(".") != 2 and settings.keys.by_hash.get(hash_key(credential)) is not None:
            raise AuthError(403, "an API key cannot act for a listener; the app backend mints a listener token "
                                 "with POST /v1/tokens")
        listener = verifier.verify(credential, clock())
        limit(app_limiter, listener.app_id, 1, "app")
        return listener

    def limit(limiter: RateLimiter, key: str, n: int, whose: str) -> None:
        wait_s = limiter.take(key, n, now_ms())
        if wait_s:
            raise HttpError(429, f"rate limit of {limiter.rate:g}/s per {whose} exceeded", retry_after_s=wait_s)

    def check_same_listener(listener: Listener, items: list[Any]) -> None:
        """A body may repeat the token's own user id, never name another listener (403)."""
        for index, item in enumerate(items):
            try:
                user_id = claimed_user_id(item)
            except Invalid as exc:
                raise HttpError(400, f"item {index}: {exc}") from None
            if user_id is not None and settings.pseudonymizer.listener_id(user_id) != listener.listener_id:
                raise AuthError(403, f"item {index} names another listener than the token's")

    def batch_of(body: Any, field: str, listener: Listener) -> list[Any]:
        if not isinstance(body, dict) or not isinstance(body.get(field), list):
            raise HttpError(400, f'body must be a JSON object with a "{field}" array')
        items: list[Any] = body[field]
        if not items:
            raise HttpError(400, f'"{field}" is empty')
        if len(items) > settings.max_batch:
            raise HttpError(413, f'"{field}" has {len(items)} items; at most {settings.max_batch} per request')
        check_same_listener(listener, items)
        limit(listener_limiter, listener.listener_id, len(items), "listener")
        limit(limiter, listener.app_id, len(items), "app")
        return items

    def device_pseudonym(device: str | None) -> str | None:
        return None if device is None else settings.pseudonymizer.listener_id("device\x00" + device)[:16]

    def telemetry_record(item: Any, listener: Listener, received: int) -> tuple[str, dict[str, Any]]:
        event = parse_telemetry(item, received, settings.telemetry_window)
        return event.event_id, event.record(listener.listener_id, received, device_pseudonym(event.device))

    def play_record(item: Any, listener: Listener, received: int) -> tuple[str, dict[str, Any]]:
        # A body's subscription_tier/territory are ignored (older clients send them): the token decides.
        event = parse_play(item, received, settings.plays_window)
        return event.play_id, event.record(listener.listener_id, listener.subscription_tier, listener.territory,
                                           received)

    async def ingest_batch(request: Request, field: str, kind: str, topic: str,
                           parse: Callable[[Any, Listener, int], tuple[str, dict[str, Any]]]) -> Response:
        listener = listener_of(request)
        items = batch_of(await read_json(request), field, listener)
        received = now_ms()
        rejected, duplicates, ids = [], 0, set()
        accepted: list[tuple[dict[str, Any], dict[str, Any]]] = []
        for index, item in enumerate(items):
            try:
                event_id, value = parse(item, listener, received)
            except Invalid as exc:
                rejected.append({"index": index, "field": exc.field, "reason": exc.reason})
                continue
            # Ids are deduplicated per listener: one listener cannot shadow another's events.
            scoped = f"{listener.listener_id}/{event_id}"
            if scoped in ids or dedup[kind].seen(scoped, received):
                duplicates += 1
                continue
            ids.add(scoped)
            accepted.append(({"listener_id": listener.listener_id}, value))
        EVENTS.labels(kind, "rejected").inc(len(rejected))
        EVENTS.labels(kind, "duplicate").inc(duplicates)
        await publish(serdes[topic], accepted, "nothing from this request was accepted")
        for scoped in ids:
            dedup[kind].remember(scoped, received)
        EVENTS.labels(kind, "accepted").inc(len(accepted))
        body = {"accepted": len(accepted), "duplicates": duplicates, "rejected": rejected}
        status = 422 if rejected and not accepted and not duplicates else 202
        return json_response(status, body)

    async def publish(serde: TopicSerde, records: list[tuple[dict[str, Any], dict[str, Any]]],
                      lost: str = "nothing was accepted") -> None:
        try:
            await state["publisher"].publish(serde, records)
        except Overloaded as exc:
            raise HttpError(429, f"ingest is overloaded; {lost}", retry_after_s=exc.retry_after_s) from None
        except Unavailable as exc:
            raise HttpError(503, f"{exc}; {lost}, retry", retry_after_s=5) from None

    async def telemetry(request: Request) -> Response:
        return await ingest_batch(request, "events", "telemetry", "listener.telemetry.v1", telemetry_record)

    async def plays(request: Request) -> Response:
        return await ingest_batch(request, "plays", "plays", "listener.plays.v1", play_record)

    async def tokens(request: Request) -> Response:
        principal = settings.keys.authenticate(request.headers.get("authorization"))
        if "listener-app" not in principal.scopes:
            raise AuthError(403, f"key {principal.key_id} lacks the listener-app scope (only app backends mint "
                                 "listener tokens)")
        limit(token_limiter, principal.key_id, 1, "app key (token minting)")
        try:
            wanted = parse_token_request(await read_json(request))
        except Invalid as exc:
            raise HttpError(422, exc.reason, field=exc.field) from None
        listener_id = settings.pseudonymizer.listener_id(wanted.app_user_id)
        token, expires_at = settings.tokens.issue(listener_id, wanted.subscription_tier, wanted.territory,
                                                  principal.key_id, clock())
        TOKENS.inc()
        return json_response(201, {"token": token, "token_type": "Bearer", "expires_at": expires_at,
                                   "expires_in": expires_at - int(clock())})

    async def jwks(request: Request) -> Response:
        return json_response(200, dict(settings.tokens.public.as_dict(private=False)),
                             headers={"Cache-Control": "public, max-age=300"})

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
        await publish(serdes["catalog.consent.v1"], [(key, parsed.record(change_id, now))])
        log.info("consent_changed", rights_holder_id=parsed.rights_holder_id, work_id=parsed.work_id,
                 change_id=change_id, ai_generation=parsed.ai_generation, ai_training=parsed.ai_training)
        return json_response(202, {"change_id": change_id, "effective_from": parsed.effective_from})

    async def erasure(request: Request) -> Response:
        listener = listener_of(request)
        body = await read_json(request, allow_empty=True)
        if not isinstance(body, dict):
            raise HttpError(400, "body must be a JSON object (or empty)")
        check_same_listener(listener, [body])
        limit(listener_limiter, listener.listener_id, 1, "listener")
        erasure_id = str(uuid.uuid4())
        record = {"erasure_id": erasure_id, "listener_id": listener.listener_id, "requested_at": now_ms()}
        await publish(serdes["listener.erasures.v1"], [({"listener_id": listener.listener_id}, record)])
        log.info("erasure_requested", listener_id=listener.listener_id, erasure_id=erasure_id)
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
        return json_response(200, served_openapi(openapi, settings, now_ms()))

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
        route("/v1/tokens", tokens, ["POST"], "tokens"),
        route("/.well-known/jwks.json", jwks, ["GET"], "jwks"),
        route("/v1/telemetry", telemetry, ["POST"], "telemetry"),
        route("/v1/plays", plays, ["POST"], "plays"),
        route("/v1/rights-holders/{rights_holder_id}/consent", consent, ["PUT"], "consent"),
        route("/v1/erasures", erasure, ["POST"], "erasure"),
        route("/healthz", healthz, ["GET"], "healthz"),
        route("/readyz", readyz, ["GET"], "readyz"),
        route("/metrics", metrics, ["GET"], "metrics"),
        route("/openapi.json", openapi_json, ["GET"], "openapi"),
    ], lifespan=lifespan)


def served_openapi(document: dict[str, Any], settings: IngestSettings, now_ms: int,
                   margin_ms: int = 600_000) -> dict[str, Any]:
    """The OpenAPI document with the time windows ingest enforces stated as bounds, as of ``now_ms``
    (``margin_ms`` inside them, so the document stays true for a while after it was fetched)."""
    served = copy.deepcopy(document)
    schemas = served["components"]["schemas"]
    for schema, field, window in (("TelemetryEvent", "event_time", settings.telemetry_window),
                                  ("PlayEvent", "started_at", settings.plays_window)):
        bounds = schemas[schema]["properties"][field]
        bounds["minimum"] = now_ms - window.max_age_ms + margin_ms
        bounds["maximum"] = now_ms + max(0, window.max_future_ms - margin_ms // 10)
    schemas["Consent"]["properties"]["effective_from"]["minimum"] = now_ms + margin_ms // 10
    return served


def app_from_env() -> Starlette:
    """uvicorn factory: settings from the environment (each worker process calls it)."""
    from kit.logs import configure_logging

    configure_logging(SERVICE)
    return create_app(IngestSettings.from_env(), KafkaSettings.from_env())

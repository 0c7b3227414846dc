"""Request ids, JSON logs and Prometheus metrics, the same in every process."""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid
from collections.abc import Mapping, MutableMapping
from contextvars import ContextVar
from typing import Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from structlog.typing import Processor

__all__ = [
    "REQUEST_ID_HEADER",
    "RequestContextMiddleware",
    "configure_logging",
    "current_request_id",
    "metrics_endpoint",
]

REQUEST_ID_HEADER = "X-Request-ID"
_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
# A caller may pass its own id (the gateway always does); anything odd is replaced.
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

HTTP_REQUESTS = Counter(
    "http_requests_total", "HTTP requests handled", ["service", "method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "http_request_duration_seconds",
    "Time to handle an HTTP request",
    ["service", "method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


def current_request_id() -> str | None:
    return _request_id.get()


def _add_request_id(_: Any, __: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
    rid = _request_id.get()
    if rid is not None:
        event.setdefault("request_id", rid)
    return event


def configure_logging(service: str, level: str = "INFO") -> None:
    """One JSON object per line on stdout, with the service name and the request id.

    Records of the standard library's logging (httpx, SQLAlchemy, alembic, ...) are rendered
    the same way, with their logger's name, so that every line on stdout parses as JSON.
    """
    stamp: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        _add_request_id,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*stamp, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    logging.basicConfig(handlers=[handler], level=level.upper(), force=True)
    # Every internal call (event delivery, simulated webhooks) already has its own log line
    # at the receiving end; httpx's per-request INFO line would double them.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLevelName(level.upper())))
    structlog.configure(
        processors=[
            *stamp,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)


class RequestContextMiddleware:
    """Gives every request an id (passed through or created), logs it and counts it."""

    def __init__(self, app: ASGIApp, *, service: str) -> None:
        self.app = app
        self.service = service
        self._served_by = service.encode()
        self.log = structlog.get_logger("qunbuy.http")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
                break
        rid = incoming if incoming and _VALID_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        token = _request_id.set(rid)
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", rid.encode()))
                headers.append((b"x-served-by", self._served_by))
                message = {**message, "headers": headers}
            await send(message)

        started_response = False

        async def send_tracked(message: Message) -> None:
            nonlocal started_response
            started_response = started_response or message["type"] == "http.response.start"
            await send_with_id(message)

        try:
            await self.app(scope, receive, send_tracked)
        except Exception as exc:
            # Answered here rather than by Starlette's outermost handler, so that a 500 carries
            # the request id and X-Served-By like any other answer, and so that the server keeps
            # the connection (uvicorn closes it when an exception reaches it, and a proxy that
            # reuses the connection then fails an innocent request).
            if started_response:
                raise
            from shared.errors import database_unavailable, send_database_unavailable, send_problem

            code = database_unavailable(exc)
            if code is not None:
                self.log.warning(code, path=scope["path"])
                await send_database_unavailable(scope, send_with_id, code)
                return
            self.log.exception("unhandled_error", path=scope["path"], error=type(exc).__name__)
            await send_problem(
                scope,
                send_with_id,
                status=500,
                code="internal_error",
                title="Internal server error",
                detail="An unexpected error occurred. Quote the request id when reporting it.",
            )
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            HTTP_REQUESTS.labels(self.service, method, template, str(status)).inc()
            HTTP_LATENCY.labels(self.service, method, template).observe(elapsed)
            if template not in ("/healthz", "/readyz", "/metrics"):
                self.log.info(
                    "request",
                    method=method,
                    path=scope["path"],
                    status=status,
                    duration_ms=round(elapsed * 1000, 2),
                )
            _request_id.reset(token)


async def metrics_endpoint(_: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

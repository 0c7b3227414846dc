"""RFC 9457 problem details, and the domain exceptions that become them.

Exception tree::

    DomainError                 (status, stable ``code``; rendered as problem+json)
     +-- NotFound               404 ``not_found``
     +-- Conflict               409 ``conflict``
     +-- Unauthorized           401 ``unauthorized`` (token missing, malformed, expired, forged)
     +-- Forbidden              403 ``forbidden`` (valid token, wrong role or merchant)
     +-- BadRequest             400 ``bad_request``
     +-- ... one subclass per expected failure in each domain

A data exception from the database (text it cannot store, a value beyond a column) is bad
input that got past the schemas: it becomes a 422 ``unprocessable_input`` and the request's
transaction rolls back. Anything else that escapes an endpoint is a bug: it becomes a 500
``internal_error`` with the request id (to find the log line) and no stack trace.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope, Send

from shared.observability import REQUEST_ID_HEADER

__all__ = [
    "PROBLEM_JSON",
    "BadRequest",
    "Conflict",
    "DomainError",
    "Forbidden",
    "NotFound",
    "Problem",
    "Unauthorized",
    "database_unavailable",
    "install_error_handlers",
    "is_data_error",
    "is_disconnect",
    "problem_body",
    "problem_response",
    "responses",
    "send_database_unavailable",
    "send_problem",
]

PROBLEM_JSON = "application/problem+json"
_log = structlog.get_logger("qunbuy.errors")


class Problem(BaseModel):
    """The body of every error response (RFC 9457) with a stable machine ``code``."""

    type: str = "about:blank"
    title: str
    status: int
    code: str
    detail: str | None = None
    instance: str | None = None
    request_id: str | None = None
    errors: list[dict[str, Any]] | None = None


class DomainError(Exception):
    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"
    title: ClassVar[str] = "Bad request"
    # Seconds a client should wait before trying again (sent as Retry-After), if any.
    retry_after: int | None = None

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail
        self.extra = extra


class BadRequest(DomainError):
    pass


class NotFound(DomainError):
    status = 404
    code = "not_found"
    title = "Not found"


class Conflict(DomainError):
    status = 409
    code = "conflict"
    title = "Conflict"


class Unauthorized(DomainError):
    status = 401
    code = "unauthorized"
    title = "Authentication required"


class Forbidden(DomainError):
    status = 403
    code = "forbidden"
    title = "Forbidden"


def responses(*errors: type[DomainError]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` for an endpoint, grouping the declared errors by status, with
    their stable codes (``x-problem-codes``) and an example body for each."""
    out: dict[int | str, dict[str, Any]] = {}
    for err in errors:
        entry = out.setdefault(
            err.status,
            {
                "model": Problem,
                "description": "",
                "x-problem-codes": [],
                "content": {
                    PROBLEM_JSON: {
                        "schema": {"$ref": "#/components/schemas/Problem"},
                        "examples": {},
                    }
                },
            },
        )
        if err.code in entry["x-problem-codes"]:
            continue
        entry["x-problem-codes"].append(err.code)
        entry["description"] = ", ".join(filter(None, [entry["description"], f"`{err.code}`"]))
        entry["content"][PROBLEM_JSON]["examples"][err.code] = {
            "summary": err.title,
            "value": {
                "type": "about:blank",
                "title": err.title,
                "status": err.status,
                "code": err.code,
            },
        }
    return out


def _request_id(request: Request) -> str | None:
    value = getattr(request.state, "request_id", None)
    return value if isinstance(value, str) else None


def problem_body(
    *,
    status: int,
    code: str,
    title: str,
    detail: str | None = None,
    instance: str | None = None,
    request_id: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The one shape of every error body, whoever writes it (handlers or raw ASGI code)."""
    body = Problem(
        title=title,
        status=status,
        code=code,
        detail=detail,
        instance=instance,
        request_id=request_id,
        errors=errors,
    ).model_dump(exclude_none=True)
    if extra:
        body.update(extra)
    return body


def problem_response(
    request: Request,
    *,
    status: int,
    code: str,
    title: str,
    detail: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    body = problem_body(
        status=status,
        code=code,
        title=title,
        detail=detail,
        instance=request.url.path,
        request_id=_request_id(request),
        errors=errors,
        extra=extra,
    )
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


async def send_problem(
    scope: Scope,
    send: Send,
    *,
    status: int,
    code: str,
    title: str,
    detail: str | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Writes a problem+json response from raw ASGI code (middleware, the gateway's proxy)."""
    state = scope.get("state") or {}
    rid = state.get("request_id") if isinstance(state, dict) else None
    raw = json.dumps(
        problem_body(
            status=status,
            code=code,
            title=title,
            detail=detail,
            instance=scope.get("path"),
            request_id=rid if isinstance(rid, str) else None,
            extra=extra,
        ),
        ensure_ascii=False,
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", PROBLEM_JSON.encode()),
                (b"content-length", str(len(raw)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": raw})


def _sqlstates(exc: BaseException) -> list[str]:
    """The SQLSTATEs of the exception and of what it wraps (the driver's error under
    SQLAlchemy's)."""
    found = []
    seen: BaseException | None = exc.orig if isinstance(exc, DBAPIError) else exc
    while seen is not None:
        state = str(getattr(seen, "sqlstate", "") or "")
        if state:
            found.append(state)
        seen = seen.__cause__
    return found


def is_data_error(exc: BaseException) -> bool:
    """True for PostgreSQL data exceptions (SQLSTATE class 22: text it cannot store, a value
    too long for its column, a number out of range) and the driver's refusal of such input."""
    return any(state.startswith("22") for state in _sqlstates(exc))


def is_pool_timeout(exc: BaseException) -> bool:
    """True when no pooled connection came free in time: the service is overloaded, and the
    request did nothing (it never had a connection)."""
    return isinstance(exc, PoolTimeout)


def is_disconnect(exc: BaseException) -> bool:
    """True when the database connection was lost under the statement (a server restart or
    failover): the pool has been invalidated, and a retry gets a fresh connection."""
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def _cannot_connect(exc: BaseException) -> bool:
    """A new connection was refused: the server is down or restarting (the socket refused,
    SQLSTATE 57P01-57P03, class 08), so nothing ran."""
    seen: BaseException | None = exc.orig if isinstance(exc, DBAPIError) else exc
    while seen is not None:
        if isinstance(seen, OSError):
            return True
        seen = seen.__cause__
    return any(s.startswith(("08", "57P")) for s in _sqlstates(exc))


_UNAVAILABLE = {
    "database_unavailable": "The database connection was lost; retry the request",
    "database_busy": "The service is overloaded (no database connection came free); retry",
    "database_conflict": "A concurrent change aborted this one, and nothing was written; retry",
}


def database_unavailable(exc: BaseException) -> str | None:
    """The stable code of a database failure that a retry can cure, or None."""
    if is_disconnect(exc) or _cannot_connect(exc):
        return "database_unavailable"
    # No pooled connection came free, or the server has no connection slot left (53300).
    if is_pool_timeout(exc) or any(s.startswith("53") for s in _sqlstates(exc)):
        return "database_busy"
    # The server rolled the transaction back (class 40: a deadlock, a serialization failure).
    if any(s.startswith("40") for s in _sqlstates(exc)):
        return "database_conflict"
    return None


async def send_database_unavailable(scope: Scope, send: Send, code: str) -> None:
    await send_problem(
        scope,
        send,
        status=503,
        code=code,
        title=_UNAVAILABLE[code],
        headers=[(b"retry-after", b"1")],
    )


_STATUS_CODES = {
    400: ("bad_request", "Bad request"),
    401: ("unauthorized", "Authentication required"),
    403: ("forbidden", "Forbidden"),
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    406: ("not_acceptable", "Not acceptable"),
    408: ("body_timeout", "The request body arrived too slowly"),
    413: ("body_too_large", "The request body is too large"),
    415: ("unsupported_media_type", "Unsupported media type"),
}


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    return problem_response(
        request,
        status=exc.status,
        code=exc.code,
        title=exc.title,
        detail=exc.detail,
        headers=headers or None,
        extra=exc.extra or None,
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {
            "path": ".".join(str(p) for p in err.get("loc", ())),
            "message": err.get("msg", ""),
            "type": err.get("type", ""),
        }
        for err in exc.errors()
    ]
    return problem_response(
        request,
        status=422,
        code="validation_error",
        title="The request is not valid",
        detail="; ".join(f"{e['path']}: {e['message']}" for e in errors),
        errors=errors,
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code, title = _STATUS_CODES.get(exc.status_code, ("http_error", "HTTP error"))
    # Starlette's default detail is the status phrase ("Not Found"): it only repeats the title.
    repeats_title = isinstance(exc.detail, str) and exc.detail.casefold() == title.casefold()
    detail = exc.detail if isinstance(exc.detail, str) and not repeats_title else None
    return problem_response(
        request,
        status=exc.status_code,
        code=code,
        title=title,
        detail=detail,
        headers=dict(exc.headers) if exc.headers else None,
    )


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    code = database_unavailable(exc)
    if code is not None:
        _log.warning(code, path=request.url.path)
        return problem_response(
            request, status=503, code=code, title=_UNAVAILABLE[code], headers={"Retry-After": "1"}
        )
    if not is_data_error(exc):
        raise exc  # a bug: answered as a 500 by the request-context middleware
    # The message names the column or the value: it is logged, never sent.
    _log.warning(
        "unstorable_input",
        path=request.url.path,
        error=type(getattr(exc, "orig", exc)).__name__,
        request_id=_request_id(request),
    )
    return problem_response(
        request,
        status=422,
        code="unprocessable_input",
        title="The request holds a value that cannot be stored",
        detail="A text or number is too long, out of range or holds characters "
        "that cannot be stored (such as NUL).",
    )


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # Starlette runs this handler in its outermost middleware, after the request-context
    # middleware has returned: the request id is carried over by hand, to the log line and
    # to the response header, so that the id a caller quotes finds the traceback.
    rid = _request_id(request)
    _log.exception(
        "unhandled_error", path=request.url.path, error=type(exc).__name__, request_id=rid
    )
    return problem_response(
        request,
        status=500,
        code="internal_error",
        title="Internal server error",
        detail="An unexpected error occurred. Quote the request id when reporting it.",
        headers={REQUEST_ID_HEADER: rid} if rid else None,
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(DomainError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(PoolTimeout, _database_error)
    app.add_exception_handler(Exception, _unexpected_error)

"""Keyset (cursor) pagination and merchant scoping for list endpoints.

A page is ordered by a sortable column and a unique key (``created_at, id``), and the next
page starts strictly after the last row of this one: stable while rows are inserted, no
OFFSET scan. The cursor is opaque to clients (base64url of a small JSON array); its values
are type-checked against the columns before they reach SQL, and anything malformed is a 400
``invalid_cursor``.

Repositories call :func:`fetch_page` with their ``select``; endpoints take :data:`PageDep`
and return :class:`Page`.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Depends, Query
from pydantic import BaseModel
from sqlalchemy import ColumnElement, DateTime, Integer, Row, Select, String, Uuid, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from shared.auth import Principal, RoleRequired
from shared.errors import BadRequest

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "InvalidCursor",
    "Page",
    "PageDep",
    "PageParams",
    "fetch_page",
    "scope_to_merchant",
    "scope_to_owner",
]

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
T = TypeVar("T")


class InvalidCursor(BadRequest):
    code = "invalid_cursor"
    title = "The cursor is not one this list gave out"


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = None


@dataclass(frozen=True)
class PageParams:
    limit: int
    cursor: tuple[Any, Any] | None


def _decode(cursor: str) -> tuple[Any, Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise InvalidCursor() from exc
    if not isinstance(values, list) or len(values) != 2:
        raise InvalidCursor()
    return values[0], values[1]


def page_params(
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Items per page.")] = DEFAULT_LIMIT,
    cursor: Annotated[
        str | None,
        Query(max_length=512, description="`next_cursor` of the previous page."),
    ] = None,
) -> PageParams:
    return PageParams(limit=limit, cursor=_decode(cursor) if cursor else None)


PageDep = Annotated[PageParams, Depends(page_params)]


def _typed(column: ColumnElement[Any], value: Any) -> Any:
    """The cursor value as the column's Python type; InvalidCursor when it is not one."""
    kind = column.type
    try:
        if isinstance(kind, DateTime) and isinstance(value, str):
            parsed = datetime.fromisoformat(value)
            if parsed.tzinfo is None:
                raise InvalidCursor()
            return parsed
        if isinstance(kind, Uuid) and isinstance(value, str):
            return uuid.UUID(value)
        if (
            isinstance(kind, Integer)
            and isinstance(value, int)
            and not isinstance(value, bool)
            and abs(value) < 2**63
        ):
            return value
        if isinstance(kind, String) and isinstance(value, str) and "\x00" not in value:
            return value
    except ValueError as exc:
        raise InvalidCursor() from exc
    raise InvalidCursor()


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def _encode(sort_value: Any, key_value: Any) -> str:
    raw = json.dumps([_plain(sort_value), _plain(key_value)], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


async def fetch_page(
    session: AsyncSession,
    stmt: Select[Any],
    *,
    sort: ColumnElement[Any],
    key: ColumnElement[Any],
    params: PageParams,
    descending: bool = True,
) -> tuple[Sequence[Row[Any]], str | None]:
    """One page of ``stmt`` ordered by (``sort``, ``key``); ``stmt`` must select both."""
    if params.cursor is not None:
        after = (_typed(sort, params.cursor[0]), _typed(key, params.cursor[1]))
        position = tuple_(sort, key)
        stmt = stmt.where(position < after if descending else position > after)
    order = (sort.desc(), key.desc()) if descending else (sort.asc(), key.asc())
    rows = (await session.execute(stmt.order_by(*order).limit(params.limit + 1))).all()
    if len(rows) <= params.limit:
        return rows, None
    page = rows[: params.limit]
    last = page[-1]._mapping
    return page, _encode(last[sort], last[key])


def scope_to_merchant(
    stmt: Select[Any], principal: Principal, merchant_column: ColumnElement[Any]
) -> Select[Any]:
    """Staff see their merchant's rows, admins every merchant's; anyone else is refused."""
    if principal.is_admin:
        return stmt
    if principal.has("staff") and principal.merchant_id:
        return stmt.where(merchant_column == principal.merchant_id)
    raise RoleRequired("requires the staff role")


def scope_to_owner(
    stmt: Select[Any],
    principal: Principal,
    *,
    merchant_column: ColumnElement[Any],
    owner_column: ColumnElement[Any],
) -> Select[Any]:
    """Staff see their merchant's rows (admins every merchant's); anyone else their own."""
    if principal.is_admin or principal.has("staff"):
        return scope_to_merchant(stmt, principal, merchant_column)
    return stmt.where(owner_column == principal.sub)

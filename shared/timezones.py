"""Time zones named by callers (the days of a report's daily series)."""

from __future__ import annotations

import re
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import Query

from shared.errors import DomainError

__all__ = ["TimezoneQuery", "UnknownTimezone", "check_timezone"]

_TZ_NAME = re.compile(r"[A-Za-z0-9_+\-/]{1,64}")


class UnknownTimezone(DomainError):
    status = 422
    code = "unknown_timezone"
    title = "Not an IANA time zone name (for example Asia/Shanghai)"


def check_timezone(name: str) -> str:
    """``name`` when it is an IANA zone this machine knows; UnknownTimezone otherwise (never
    a path: the name is checked before the zone database is asked)."""
    if _TZ_NAME.fullmatch(name) is None:
        raise UnknownTimezone(field="tz")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise UnknownTimezone(field="tz") from exc
    return name


TimezoneQuery = Annotated[
    str, Query(max_length=64, description="The days of the daily series are this zone's.")
]

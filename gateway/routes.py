"""Which service answers which public path. The gateway answers /v1/auth, /v1/me itself."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

# Public prefix -> (service, prefix on the service). Matching is on whole path segments.
ROUTES: dict[str, tuple[str, str]] = {
    "/v1/presales": ("orders", "/v1/presales"),
    "/v1/orders": ("orders", "/v1/orders"),
    "/v1/groups": ("orders", "/v1/groups"),
    "/v1/pickup-points": ("orders", "/v1/pickup-points"),
    "/v1/payments": ("orders", "/v1/payments"),
    "/v1/payment-methods": ("orders", "/v1/payment-methods"),
    "/v1/webhooks/orders": ("orders", "/webhooks"),
    "/v1/projects": ("crowdfund", "/v1/projects"),
    "/v1/pledges": ("crowdfund", "/v1/pledges"),
    "/v1/webhooks/crowdfund": ("crowdfund", "/webhooks"),
    "/v1/distributors": ("referrals", "/v1/distributors"),
    "/v1/referral-links": ("referrals", "/v1/referral-links"),
    "/v1/commissions": ("referrals", "/v1/commissions"),
    "/v1/commission-rules": ("referrals", "/v1/commission-rules"),
    "/v1/withdrawals": ("referrals", "/v1/withdrawals"),
    "/v1/webhooks/referrals": ("referrals", "/webhooks"),
}


@dataclass(frozen=True, slots=True)
class Target:
    service: str
    path: str  # still percent-encoded, exactly as the client sent it after the prefix
    route: str  # the public prefix that matched (the metrics label; never the raw path)


def _fully_unquoted(segment: str) -> str:
    """Undo percent-encoding until nothing changes (``%252e`` -> ``%2e`` -> ``.``)."""
    for _ in range(5):
        decoded = unquote(segment)
        if decoded == segment:
            break
        segment = decoded
    return segment


def _escapes(raw_path: str) -> bool:
    """True when any segment, however encoded, is or hides a ``.``/``..`` step."""
    if "." not in raw_path and "%" not in raw_path:
        return False  # the common case, decided without decoding anything
    return any(
        piece in (".", "..")
        for segment in raw_path.split("/")
        for piece in _fully_unquoted(segment).replace("\\", "/").split("/")
    )


def resolve(raw_path: str) -> Target | None:
    """The service and upstream path for a public path, or None when nothing serves it.

    Works on the raw (percent-encoded) path and forwards it unchanged after the prefix, so
    the service decodes exactly once what the client encoded; a path with a dot segment in
    any encoding never leaves the gateway (nothing may walk out of a prefix into /internal).
    """
    if _escapes(raw_path):
        return None
    parts = raw_path.split("/", 4)  # "", "v1", resource, rest...
    if len(parts) < 3:
        return None
    first = "/".join(parts[:3])
    route = ROUTES.get(first)
    rest_start = len(first)
    if route is None and len(parts) >= 4:
        # two-segment prefixes such as /v1/webhooks/orders
        second = "/".join(parts[:4])
        route = ROUTES.get(second)
        rest_start = len(second)
    if route is None:
        return None
    service, upstream_prefix = route
    return Target(
        service=service,
        path=upstream_prefix + raw_path[rest_start:],
        route=raw_path[:rest_start],
    )

"""Which service answers which public path. The gateway answers /v1/auth, /v1/me itself."""

from __future__ import annotations

from dataclasses import dataclass

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
}


@dataclass(frozen=True, slots=True)
class Target:
    service: str
    path: str


def resolve(path: str) -> Target | None:
    """The service and upstream path for a public ``path``, or None when nothing serves it."""
    if any(segment in (".", "..") for segment in path.split("/")):
        # Never let a dot segment walk out of a route prefix (e.g. into /internal).
        return None
    parts = path.split("/", 4)  # "", "v1", resource, rest...
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
    return Target(service=service, path=upstream_prefix + path[rest_start:])

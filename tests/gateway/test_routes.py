from __future__ import annotations

import pytest

from gateway.routes import ROUTES, Target, resolve


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1/presales", Target("orders", "/v1/presales", "/v1/presales")),
        ("/v1/presales/p1/orders", Target("orders", "/v1/presales/p1/orders", "/v1/presales")),
        ("/v1/pledges/x", Target("crowdfund", "/v1/pledges/x", "/v1/pledges")),
        ("/v1/withdrawals", Target("referrals", "/v1/withdrawals", "/v1/withdrawals")),
        ("/v1/webhooks/orders/stripe", Target("orders", "/webhooks/stripe", "/v1/webhooks/orders")),
        (
            "/v1/webhooks/crowdfund/stripe",
            Target("crowdfund", "/webhooks/stripe", "/v1/webhooks/crowdfund"),
        ),
        (
            "/v1/webhooks/referrals/stripe",
            Target("referrals", "/webhooks/stripe", "/v1/webhooks/referrals"),
        ),
        ("/v1/presalesx", None),
        ("/v1/webhooks/gateway/stripe", None),
        ("/v1", None),
        ("/internal/events", None),
        ("/internal/events/batch", None),
        ("/v1/orders/../../internal/events", None),
        ("/v1/orders/../../internal/events/batch", None),
        ("/v1/webhooks/orders/./stripe", None),
        # Encoded, double-encoded and slash-hidden dot segments never leave the gateway.
        ("/v1/orders/%2e%2e/%2e%2e/internal/events", None),
        ("/v1/orders/%252e%252e/%252e%252e/internal/events", None),
        ("/v1/orders/%25252E%25252E/metrics", None),
        ("/v1/orders/..%2F..%2Finternal%2Fevents", None),
        ("/v1/orders/..%5C..%5Cinternal", None),
        # Everything else is forwarded exactly as encoded, for the service to decode once.
        ("/v1/orders/a%2Fb", Target("orders", "/v1/orders/a%2Fb", "/v1/orders")),
        ("/v1/orders/%E5%9B%A2", Target("orders", "/v1/orders/%E5%9B%A2", "/v1/orders")),
        ("/v1/orders/a.b..c", Target("orders", "/v1/orders/a.b..c", "/v1/orders")),
    ],
)
def test_resolve(path: str, expected: Target | None) -> None:
    assert resolve(path) == expected


def test_every_resource_in_the_architecture_is_routed() -> None:
    expected = {
        "orders": {"/v1/presales", "/v1/orders", "/v1/groups", "/v1/pickup-points"},
        "crowdfund": {"/v1/projects", "/v1/pledges"},
        "referrals": {
            "/v1/distributors",
            "/v1/referral-links",
            "/v1/commissions",
            "/v1/commission-rules",
            "/v1/withdrawals",
        },
    }
    for service, prefixes in expected.items():
        for prefix in prefixes:
            assert ROUTES[prefix][0] == service

"""Fixtures of the orders payment tests: the orders app with each payment provider."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from tests.shared.payments.support import (
    PaymentsApp,
    payments_app,
    payments_env,
)


@pytest.fixture
async def sim_orders(service_env: Callable[..., dict[str, str]]) -> AsyncIterator[PaymentsApp]:
    async with payments_app("orders", service_env("orders", **payments_env("simulated"))) as app:
        yield app


@pytest.fixture
async def stripe_orders(
    service_env: Callable[..., dict[str, str]], localstripe_url: str
) -> AsyncIterator[PaymentsApp]:
    env = service_env("orders", **payments_env("stripe", STRIPE_API_BASE=localstripe_url))
    async with payments_app("orders", env) as app:
        yield app

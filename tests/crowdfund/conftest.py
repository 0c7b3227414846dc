"""Fixtures of the crowdfund payment tests: the crowdfund app with each payment provider."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from tests.shared.payments.support import (
    PaymentsApp,
    payments_app,
    payments_env,
)


@pytest.fixture
async def sim_crowdfund(
    service_env: Callable[..., dict[str, str]],
) -> AsyncIterator[PaymentsApp]:
    env = service_env("crowdfund", **payments_env("simulated"))
    async with payments_app("crowdfund", env) as app:
        yield app


@pytest.fixture
async def stripe_crowdfund(
    service_env: Callable[..., dict[str, str]], localstripe_url: str
) -> AsyncIterator[PaymentsApp]:
    env = service_env("crowdfund", **payments_env("stripe", STRIPE_API_BASE=localstripe_url))
    async with payments_app("crowdfund", env) as app:
        yield app

"""Fixtures of the orders payment tests: the orders app with each payment provider."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import pytest
import stripe

from tests.shared.payments.support import (
    PaymentsApp,
    localstripe_server,
    payments_app,
    payments_env,
    stripe_client,
)


@pytest.fixture(scope="session")
def localstripe_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with localstripe_server(tmp_path_factory.mktemp("localstripe")) as url:
        yield url


@pytest.fixture(scope="session")
async def localstripe_sdk(localstripe_url: str) -> AsyncIterator[stripe.StripeClient]:
    async with stripe_client(localstripe_url) as client:
        yield client


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

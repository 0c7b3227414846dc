from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import stripe

from tests.shared.payments.support import localstripe_server, stripe_client


@pytest.fixture(scope="session")
def localstripe_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with localstripe_server(tmp_path_factory.mktemp("localstripe")) as url:
        yield url


@pytest.fixture(scope="session")
async def localstripe_sdk(localstripe_url: str) -> AsyncIterator[stripe.StripeClient]:
    async with stripe_client(localstripe_url) as client:
        yield client

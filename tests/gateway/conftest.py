"""The gateway in-process on this worker's identity database, with the fake WeChat."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from gateway.app import create_app
from gateway.config import GatewaySettings
from qunbuy.fake_wechat import FakeWeChat
from qunbuy.fake_wechat import create_app as create_fake
from tests.conftest import running
from tests.gateway.identity_support import APPS, Fake
from tests.helpers import serve


@pytest.fixture(scope="session")
async def wechat() -> AsyncIterator[Fake]:
    app = create_fake(dict(APPS))
    async with serve(app) as url:
        state: FakeWeChat = app.state.fake
        yield Fake(url, state)


@pytest.fixture
def gateway_settings(
    db_urls: dict[str, str], private_key_file: Path, wechat: Fake
) -> Callable[..., GatewaySettings]:
    def make(**extra: str) -> GatewaySettings:
        values = {
            "QUNBUY_MODE": "production",
            "DATABASE_URL": db_urls["gateway"],
            "JWT_PRIVATE_KEY_FILE": str(private_key_file),
            "WECHAT_API_BASE": wechat.url,
            "WECHAT_APP_SECRETS": ",".join(f"{a}={s}" for a, s in APPS.items()),
            "RATE_LIMITS_ENABLED": "false",
            "LOG_LEVEL": "WARNING",
            **extra,
        }
        return GatewaySettings.model_validate(values)

    return make


@pytest.fixture
async def gw(
    gateway_settings: Callable[..., GatewaySettings],
) -> AsyncIterator[httpx.AsyncClient]:
    async with running(create_app(gateway_settings())) as client:
        yield client

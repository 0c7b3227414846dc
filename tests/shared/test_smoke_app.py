from __future__ import annotations

import httpx


async def test_health_and_readiness(orders_client: httpx.AsyncClient) -> None:
    assert (await orders_client.get("/healthz")).json() == {"status": "ok"}
    ready = await orders_client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ready"}

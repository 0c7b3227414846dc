"""The upstream the proxy benchmark uses: one small JSON GET, like a typical read endpoint."""

from __future__ import annotations

from fastapi import FastAPI

app = FastAPI()


@app.get("/v1/orders/{order_id}")
async def get_order(order_id: str) -> dict[str, object]:
    return {"id": order_id, "status": "paid", "amount": {"amount": 12900, "currency": "CNY"}}

"""The reference of bench/presale_rush.py: an endpoint that performs only the atomic
reservation statement of an order (no token check, no order row, no payment).

    DATABASE_URL=... uvicorn bench.reservation_reference:app
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import text

from shared.db import make_engine

_RESERVE = text(
    "UPDATE presale_campaign SET reserved_quantity = reserved_quantity + 1"
    " WHERE id = :id AND status = 'open' AND NOT paused AND closes_at > now()"
    " AND (capacity IS NULL OR reserved_quantity + 1 <= capacity) RETURNING reserved_quantity"
)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.engine = make_engine(os.environ["DATABASE_URL"])
    yield
    await app.state.engine.dispose()


app = FastAPI(lifespan=lifespan)


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/v1/presales/{campaign_id}/orders")
async def reserve(campaign_id: uuid.UUID) -> JSONResponse:
    async with app.state.engine.begin() as conn:
        taken = await conn.scalar(_RESERVE, {"id": campaign_id})
    if taken is None:
        return JSONResponse({"code": "presale_sold_out"}, status_code=409)
    return JSONResponse({"reserved": taken}, status_code=201)

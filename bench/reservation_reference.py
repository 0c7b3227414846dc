"""The references of bench/presale_rush.py: an endpoint that performs only the atomic
reservation statement of an order (no order row, no payment).

    DATABASE_URL=... uvicorn bench.reservation_reference:app            # bare: nothing else
    (service env) uvicorn bench.reservation_reference:framed --factory  # in the service frame

``framed`` is the same statement in the frame every service runs in (request ids, limits,
the idempotency middleware, the token check, the request's transaction): the difference
between the two references is the frame's cost, and between ``framed`` and the real endpoint
the cost of the order itself (its row, its payment).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import text

from services.orders.config import OrdersSettings
from services.orders.models import platform
from shared.app import ServiceSpec, create_service_app
from shared.auth import CurrentUser
from shared.db import SessionDep, make_engine
from shared.idempotency import IdempotencyKeyRequired

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


def framed() -> FastAPI:
    router = APIRouter()

    @router.post("/v1/presales/{campaign_id}/orders")
    async def reserve_in_frame(
        campaign_id: uuid.UUID,
        principal: CurrentUser,
        session: SessionDep,
        key: IdempotencyKeyRequired,
    ) -> JSONResponse:
        taken = await session.scalar(_RESERVE, {"id": campaign_id})
        if taken is None:
            return JSONResponse({"code": "presale_sold_out"}, status_code=409)
        return JSONResponse({"reserved": taken}, status_code=201)

    spec = ServiceSpec(
        name="orders", title="reference in the frame", tables=platform, routers=[router]
    )
    return create_service_app(spec, OrdersSettings())

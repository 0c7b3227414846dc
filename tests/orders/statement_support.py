"""The statements a test's requests cost the orders service's database (tests of the hot
path and of plain orders)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event, select

from tests.shared.payments.support import PaymentsApp

# The plain path's one statement (reservation, order, payment intent), committing alone.
PLAIN = ("WITH campaign AS (UPDATE presale_campaig", True)

Seen = list[tuple[str, bool]]


@contextmanager
def statements(app: PaymentsApp) -> Iterator[Seen]:
    """The service's statements while the block runs, each with whether it ran on its own
    (autocommit) rather than inside a transaction. The simulated provider's own pool is not
    watched: in production it is the provider's API, not this database."""
    seen: Seen = []

    def record(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        alone = conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
        seen.append((" ".join(statement.split())[:40], alone))

    engine = app.app.state.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


async def history(app: PaymentsApp, payment_id: str) -> list[tuple[str | None, str]]:
    changes = app.ctx.tables.payment_status_change
    async with app.app.state.sessionmaker() as session:
        rows = await session.execute(
            select(changes.c.from_status, changes.c.to_status)
            .where(changes.c.payment_id == uuid.UUID(payment_id))
            .order_by(changes.c.id)
        )
        return [(r.from_status, r.to_status) for r in rows]

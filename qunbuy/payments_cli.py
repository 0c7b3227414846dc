"""``qunbuy payments reconcile``: payments whose state differs from the provider's.

    qunbuy payments reconcile --service orders --since 2026-11-01 --until 2026-11-24 [--repair]

Prints one line per discrepancy (tab-separated: kind, provider id, payment id, fields,
ours, theirs, repaired) and exits 0 when nothing is left to repair, 3 otherwise. The
provider is the one the service is configured with (``PAYMENT_PROVIDER`` and friends in
the environment); the database is the service's (``ORDERS_DATABASE_URL``... or the
embedded server in ``--data-dir``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

__all__ = ["add_payments_commands", "reconcile_command"]

PAYMENT_SERVICES = ("orders", "crowdfund")


def _instant(text: str) -> datetime:
    """An ISO 8601 date or time; without a zone it is UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 date or time") from exc
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def add_payments_commands(subparsers: Any) -> None:
    """Adds ``payments reconcile`` to the ``qunbuy`` command's subparsers."""
    from qunbuy.platform import DEFAULT_DATA_DIR

    payments = subparsers.add_parser("payments", help="payment operations")
    sub = payments.add_subparsers(dest="payments_command", required=True)
    rec = sub.add_parser(
        "reconcile",
        help="list (and --repair) payments whose state differs from the provider's",
    )
    rec.add_argument("--service", required=True, choices=PAYMENT_SERVICES)
    rec.add_argument(
        "--since",
        type=_instant,
        default=None,
        help="payments created at or after (ISO 8601, UTC by default; default: 24 hours ago)",
    )
    rec.add_argument(
        "--until", type=_instant, default=None, help="payments created before (default: now)"
    )
    rec.add_argument("--repair", action="store_true", help="overwrite ours with the provider's")
    rec.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    rec.set_defaults(handler=reconcile_command)


def reconcile_command(args: argparse.Namespace) -> int:
    return asyncio.run(_reconcile(args))


def _settings(service: str, database_url: str, embedded: bool) -> Any:
    env: dict[str, str] = {"DATABASE_URL": database_url}
    if embedded and "QUNBUY_MODE" not in os.environ:
        env["QUNBUY_MODE"] = "embedded"
    if service == "orders":
        from services.orders.config import OrdersSettings

        return OrdersSettings.model_validate(env)
    from services.crowdfund.config import CrowdfundSettings

    return CrowdfundSettings.model_validate(env)


async def _reconcile(args: argparse.Namespace) -> int:
    from qunbuy.platform import PlatformError, open_databases
    from shared.db import autocommit_engine_for, make_engine, sessionmaker_for
    from shared.payments._reconcile import reconcile
    from shared.payments._wiring import build_provider, make_context

    if args.service == "orders":
        from services.orders.models import payments, platform
    else:
        from services.crowdfund.models import payments, platform

    until = args.until or datetime.now(UTC)
    since = args.since or until - timedelta(days=1)
    if since >= until:
        print("qunbuy: --since must be before --until", file=sys.stderr)
        return 2
    dbs = await asyncio.to_thread(open_databases, args.data_dir, [args.service])
    engine = make_engine(dbs.urls[args.service], pool_size=2)
    provider = None
    try:
        settings = _settings(args.service, dbs.urls[args.service], dbs.embedded is not None)
        sessionmaker = sessionmaker_for(engine)
        provider = build_provider(settings, tables=payments)
        if provider is None:
            raise PlatformError("payments are disabled: set PAYMENT_PROVIDER for this service")
        ctx = make_context(
            service=args.service,
            settings=settings,
            platform=platform,
            tables=payments,
            provider=provider,
            sessionmaker=sessionmaker,
            autocommit=autocommit_engine_for(engine),
        )
        async with sessionmaker() as session, session.begin():
            found = await reconcile(session, ctx, since=since, until=until, repair=args.repair)
        for d in found:
            print(
                "\t".join(
                    [
                        d.kind,
                        d.provider_payment_id,
                        str(d.payment_id or "-"),
                        ",".join(d.fields) or "-",
                        json.dumps(dict(d.ours), sort_keys=True),
                        json.dumps(dict(d.theirs), sort_keys=True),
                        "repaired" if d.repaired else "not repaired",
                    ]
                )
            )
        left = sum(1 for d in found if not d.repaired)
        print(
            f"{args.service}: {len(found)} discrepancies between "
            f"{since.isoformat()} and {until.isoformat()}, {left} not repaired"
        )
        return 0 if left == 0 else 3
    finally:
        if provider is not None:
            await provider.aclose()
        await engine.dispose()
        await asyncio.to_thread(dbs.stop)

"""The ``qunbuy`` command.

qunbuy up                     run the whole platform (embedded PostgreSQL by default)
qunbuy migrate [--service S]  apply migrations (the Kubernetes migration Job runs this);
                              S: orders, crowdfund, referrals or gateway
qunbuy events dead  --service S        list events that exhausted their retries
qunbuy events redrive --service S [--id N ...]   put dead events back in line
qunbuy jobs dead|redrive --service S [--id N ...]   the same for scheduled jobs
qunbuy referrals reconcile    every commission against its ledger entries
qunbuy admin invite --name N --email E   invite a platform admin (prints the invitation)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from qunbuy.payments_cli import add_payments_commands
from qunbuy.platform import DEFAULT_DATA_DIR, PlatformError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qunbuy", description="Qunbuy platform commands")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the gateway and the three services")
    up.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument(
        "--port-base",
        type=int,
        default=None,
        help="gateway on this port and the services on the next three (default 8000-8003)",
    )

    migrate = sub.add_parser("migrate", help="apply each service's migrations")
    migrate.add_argument("--service", choices=["orders", "crowdfund", "referrals", "gateway"])
    migrate.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)

    events = sub.add_parser("events", help="inspect and re-drive the outbox")
    events_sub = events.add_subparsers(dest="events_command", required=True)
    for name, text in (("dead", "list dead events"), ("redrive", "re-drive dead events")):
        cmd = events_sub.add_parser(name, help=text)
        cmd.add_argument("--service", required=True, choices=["orders", "crowdfund", "referrals"])
        cmd.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
        if name == "redrive":
            cmd.add_argument("--id", type=int, action="append", dest="ids", default=[])

    jobs = sub.add_parser("jobs", help="inspect and re-drive scheduled jobs")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True)
    for name, text in (("dead", "list dead jobs"), ("redrive", "re-drive dead jobs")):
        cmd = jobs_sub.add_parser(name, help=text)
        cmd.add_argument("--service", required=True, choices=["orders", "crowdfund", "referrals"])
        cmd.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
        if name == "redrive":
            cmd.add_argument("--id", type=int, action="append", dest="ids", default=[])

    referrals = sub.add_parser("referrals", help="check the commission ledger")
    referrals_sub = referrals.add_subparsers(dest="referrals_command", required=True)
    check = referrals_sub.add_parser(
        "reconcile", help="every commission against its ledger entries (exit 1 if any differ)"
    )
    check.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)

    admin = sub.add_parser("admin", help="platform admins (the gateway's identity store)")
    admin_sub = admin.add_subparsers(dest="admin_command", required=True)
    invite = admin_sub.add_parser("invite", help="invite a platform admin; prints the token")
    invite.add_argument("--name", required=True)
    invite.add_argument("--email")
    invite.add_argument("--phone")
    invite.add_argument("--ttl-hours", type=int, default=72)
    invite.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)

    add_payments_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "up":
            from qunbuy.supervisor import run_platform

            return run_platform(data_dir=args.data_dir, host=args.host, port_base=args.port_base)
        if args.command == "migrate":
            from qunbuy.commands import migrate

            return migrate(args.data_dir, args.service)
        if args.command == "events":
            from qunbuy.commands import events

            return asyncio.run(events(args))
        if args.command == "jobs":
            from qunbuy.commands import jobs

            return asyncio.run(jobs(args))
        if args.command == "admin":
            from qunbuy.commands import invite_admin

            return asyncio.run(invite_admin(args))
        if args.command == "referrals":
            from qunbuy.commands import reconcile_ledger

            return asyncio.run(reconcile_ledger(args))
        handler = getattr(args, "handler", None)
        if handler is not None:
            return int(handler(args))
    except PlatformError as exc:
        print(f"qunbuy: {exc}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())

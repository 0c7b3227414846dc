"""What a domain does when one of its payments changes, in the same transaction as the change.

A domain registers a hook for the references it owns (``order:``, ``pledge:``); whatever
brings the news (the API's answer, a webhook, reconciliation, the simulated provider's
events) runs the hook inside the transaction that records the payment's change. If the hook
raises, the change rolls back with it and the news is retried (a webhook answered 500 is
sent again; an API request answered 500 resumes on retry), so the domain never misses a
change and never sees one that was not recorded. No self-subscription over HTTP.

Payouts (Connect transfers) have hooks of their own, by the same prefixes: the domain pays
out from a job and records the answer itself; what comes later (``transfer.reversed``: the
money came back) reaches it through its payout hook, in the transaction that records the
provider event.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncSession

from shared.payments._provider import ProviderTransfer
from shared.payments._repository import PaymentRow

__all__ = [
    "PaymentChange",
    "PaymentHook",
    "PaymentHooks",
    "PayoutChange",
    "PayoutHook",
    "domain_reference",
    "parse_domain_reference",
]

ChangeKind = Literal[
    "succeeded", "canceled", "failed", "refunded", "refund_failed", "disputed", "dispute_closed"
]


@dataclass(frozen=True)
class PaymentChange:
    kind: ChangeKind
    payment: PaymentRow
    # The event's extra fields: failure_code; refund_id, refund_amount; dispute_id, ...
    details: Mapping[str, Any] = field(default_factory=dict)


PaymentHook = Callable[[AsyncSession, PaymentChange], Awaitable[None]]


@dataclass(frozen=True)
class PayoutChange:
    """A payout changed after it was made: ``reversed`` (in full or in part; the transfer's
    ``amount_reversed`` says how much came back)."""

    kind: Literal["reversed"]
    reference: str
    transfer: ProviderTransfer
    event_id: str | None = None


PayoutHook = Callable[[AsyncSession, PayoutChange], Awaitable[None]]


def domain_reference(prefix: str, object_id: uuid.UUID, stage: str) -> str:
    """A domain's payment reference: ``<prefix><object id>:<stage>`` (``order:<id>:first``)."""
    return f"{prefix}{object_id}:{stage}"


def parse_domain_reference(
    prefix: str, stages: Collection[str], reference: str
) -> tuple[uuid.UUID, str] | None:
    """(object id, stage) of one of the domain's references, or None when it is not one."""
    parts = reference.split(":")
    if len(parts) != 3 or parts[0] + ":" != prefix or parts[2] not in stages:
        return None
    try:
        return uuid.UUID(parts[1]), parts[2]
    except ValueError:
        return None


class PaymentHooks:
    """Hooks by reference prefix (``"order:"``): the longest matching prefix wins."""

    def __init__(self) -> None:
        self._hooks: dict[str, PaymentHook] = {}
        self._payout_hooks: dict[str, PayoutHook] = {}

    def register(self, prefix: str, hook: PaymentHook) -> None:
        if not prefix or prefix in self._hooks:
            raise ValueError(f"a hook for {prefix!r} is already registered (or it is empty)")
        self._hooks[prefix] = hook

    def owns(self, reference: str) -> bool:
        """Whether a domain owns ``reference``: its payments are made by that domain only."""
        return any(reference.startswith(p) for p in self._hooks)

    async def run(self, session: AsyncSession, change: PaymentChange) -> None:
        reference = change.payment.reference
        matching = [p for p in self._hooks if reference.startswith(p)]
        if matching:
            await self._hooks[max(matching, key=len)](session, change)

    def register_payout(self, prefix: str, hook: PayoutHook) -> None:
        """What the domain owning ``prefix`` does when one of its payouts changes later."""
        if not prefix or prefix in self._payout_hooks:
            raise ValueError(f"a payout hook for {prefix!r} is already registered (or it is empty)")
        self._payout_hooks[prefix] = hook

    async def run_payout(self, session: AsyncSession, change: PayoutChange) -> bool:
        """Runs the payout hook owning ``change.reference``; False when no domain owns it."""
        matching = [p for p in self._payout_hooks if change.reference.startswith(p)]
        if not matching:
            return False
        await self._payout_hooks[max(matching, key=len)](session, change)
        return True

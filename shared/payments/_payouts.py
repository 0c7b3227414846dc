"""Payouts: money from the platform's balance to a payee's connected account (a Stripe
Connect transfer), for referrals' withdrawals and crowdfunding's settlements.

The domain owns the record (its withdrawal or statement, and its ledger) and calls
:func:`pay_out` from a job, with no transaction open: the provider's idempotency key is
derived from the domain's reference and attempt, so a job that runs again (a lease that ran
out, a second worker, a retry after an outage) gets the first transfer back instead of
paying twice. The answer is a result: ``paid`` with the transfer, or ``failed`` when the
provider definitely refused (nothing was paid: the domain returns the money). An outage, or
an answer that does not say whether money moved (a concurrent request with the same key), is
:class:`PaymentProviderUnavailable`: run again later, with the same key.

Stripe keeps idempotency keys for 24 hours. Every run first looks for a transfer of the same
reference and attempt (``transfer_group`` and metadata), so a transfer made once is never
made again, however late the retry: also a job re-driven from the dead letters days later,
whose attempt count starts again (one list call a payout; payouts are few).

A transfer reversed later (``transfer.reversed``) reaches the domain through its payout
hook (:meth:`PaymentHooks.register_payout`), found by the reference in the transfer's
metadata.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import structlog

from shared.money import normalize_currency
from shared.payments._errors import (
    PaymentAmountInvalid,
    PaymentProviderUnavailable,
    PayoutAccountInvalid,
)
from shared.payments._provider import (
    ProviderError,
    ProviderTransfer,
    ProviderUnavailable,
    TransferRequest,
)
from shared.payments._state import PaymentContext, idempotency_key

__all__ = ["PAYOUT_ACCOUNT_PATTERN", "Payout", "check_payout_account", "pay_out"]

_log = structlog.get_logger("qunbuy.payments.payouts")

# Stripe's connected account ids: ``acct_`` and letters or digits (16 of them today).
PAYOUT_ACCOUNT_PATTERN = r"^acct_[A-Za-z0-9]{6,64}$"
_ACCOUNT = re.compile(PAYOUT_ACCOUNT_PATTERN)
# Refusals that do not say the transfer was not made: the same key is in use by a request
# still running (or was used with other parameters). Retried later, never taken as failed.
_UNDECIDED = frozenset({"idempotency_error", "idempotency_key_in_use", "lock_timeout"})


@dataclass(frozen=True)
class Payout:
    """The provider's answer: ``paid`` (``transfer`` holds its id) or ``failed``."""

    status: Literal["paid", "failed"]
    transfer: ProviderTransfer | None
    failure_code: str | None = None
    failure_message: str | None = None


def check_payout_account(value: str) -> str:
    """``value`` when it has the shape of a connected account id, else 422."""
    if not isinstance(value, str) or _ACCOUNT.fullmatch(value) is None:
        raise PayoutAccountInvalid()
    return value


async def pay_out(
    ctx: PaymentContext,
    *,
    reference: str,
    destination: str,
    amount: int,
    currency: str,
    attempt: int = 1,
    metadata: Mapping[str, str] | None = None,
) -> Payout:
    """Transfers ``amount`` to ``destination`` for the domain's ``reference`` (once per
    (reference, attempt), whoever calls). No maximum applies: a settlement may be large, and
    the amount is the domain's own figure, never a client's."""
    code = normalize_currency(currency)
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        raise PaymentAmountInvalid("a payout is a positive integer of minor units")
    check_payout_account(destination)
    request = TransferRequest(
        amount=amount,
        currency=code,
        destination=destination,
        reference=reference,
        metadata={
            **(metadata or {}),
            "qunbuy_service": ctx.service,
            "qunbuy_attempt": str(attempt),
        },
    )
    key = idempotency_key(ctx.service, "payout", reference, f"transfer:{attempt}")
    try:
        made = await _made_before(ctx, reference, attempt)
        transfer = made or await ctx.provider.create_transfer(request, idempotency_key=key)
    except ProviderUnavailable as exc:
        raise PaymentProviderUnavailable(exc.message) from exc
    except ProviderError as exc:
        if exc.code in _UNDECIDED:
            raise PaymentProviderUnavailable(exc.message) from exc
        _log.warning("payout_refused", reference=reference, code=exc.code)
        return Payout("failed", None, exc.code or "transfer_refused", exc.message)
    if transfer.amount_reversed >= transfer.amount:
        # Reversed in full: nothing was kept. Reversed in part, it is paid: the transfer
        # carries ``amount_reversed``, which the domain books with the payment.
        return Payout("failed", transfer, "transfer_reversed", "the transfer was reversed")
    if transfer.reversed:
        _log.warning("payout_partly_reversed", reference=reference, transfer=transfer.id)
    return Payout("paid", transfer)


async def _made_before(
    ctx: PaymentContext, reference: str, attempt: int
) -> ProviderTransfer | None:
    for transfer in await ctx.provider.find_transfers(reference):
        if transfer.metadata.get("qunbuy_attempt") == str(attempt):
            return transfer
    return None

"""What the payment layer needs from a payment provider, and the shapes it gets back.

Both providers speak Stripe's object model (PaymentIntent, SetupIntent, Refund, Charge,
Dispute, Event): the simulated provider builds the same JSON Stripe sends, so one parser
(:func:`payment_from_intent` and friends) reads API responses and webhook payloads of both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

__all__ = [
    "FAILING_PAYOUT_ACCOUNT",
    "FAILING_PAYOUT_CODE",
    "REVERSING_PAYOUT_ACCOUNT",
    "WEBHOOK_EVENTS",
    "CaptureMethod",
    "Method",
    "PaymentProvider",
    "PaymentRequest",
    "ProviderDispute",
    "ProviderError",
    "ProviderNotFound",
    "ProviderPayment",
    "ProviderRefund",
    "ProviderRejected",
    "ProviderSetup",
    "ProviderTransfer",
    "ProviderUnavailable",
    "TransferRequest",
    "dispute_from_object",
    "payment_from_intent",
    "refund_from_object",
    "setup_from_intent",
    "transfer_from_object",
]

Method = Literal["card", "wechat_pay", "alipay"]

# Connected accounts that behave badly on purpose, in the simulated provider and in the test
# stand-in for Stripe Connect (qunbuy.localstripe_connect): a transfer to the first is
# refused when it is made; one to the second is made, then reversed (``transfer.reversed``).
FAILING_PAYOUT_ACCOUNT = "acct_1FailingTransfers"
REVERSING_PAYOUT_ACCOUNT = "acct_1ReversedTransfers"
FAILING_PAYOUT_CODE = "insufficient_capabilities_for_transfer"
# The events a service's webhook endpoint subscribes to (docs/payments.md, "Setting up
# Stripe"): those that can change what we know. The others (``payment_intent.created``,
# ``charge.succeeded``, ``customer.created``...) repeat what the call that caused them
# answered already; Stripe does not send them to an endpoint that did not ask, and the
# simulated provider does not deliver them either.
WEBHOOK_EVENTS = frozenset(
    {
        "payment_intent.succeeded",
        "payment_intent.processing",
        "payment_intent.requires_action",
        "payment_intent.payment_failed",
        "payment_intent.canceled",
        "payment_intent.amount_capturable_updated",
        "refund.created",
        "refund.updated",
        "refund.failed",
        "charge.refunded",
        "charge.dispute.created",
        "charge.dispute.updated",
        "charge.dispute.closed",
        "setup_intent.succeeded",
        "setup_intent.setup_failed",
        "setup_intent.requires_action",
        "setup_intent.canceled",
        "transfer.reversed",
    }
)
CaptureMethod = Literal["automatic", "manual"]

# Stripe's PaymentIntent statuses, which are ours too (a payment follows its intent).
PAYMENT_STATUSES = (
    "requires_payment_method",
    "requires_confirmation",
    "requires_action",
    "processing",
    "requires_capture",
    "succeeded",
    "canceled",
)
REFUND_STATUSES = ("pending", "requires_action", "succeeded", "failed", "canceled")


class ProviderError(Exception):
    """The provider did not do what was asked (not a decline: declines are results)."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class ProviderUnavailable(ProviderError):
    """Network failure, timeout, rate limit or a 5xx: safe to retry with the same key."""


class ProviderRejected(ProviderError):
    """The provider refused the request (invalid state, idempotency key reused...)."""


class ProviderNotFound(ProviderError):
    """The provider has no such object."""


@dataclass(frozen=True, slots=True)
class PaymentRequest:
    amount: int
    currency: str  # ISO 4217, upper case (providers lower-case it on the wire)
    method: Method
    capture_method: CaptureMethod
    metadata: Mapping[str, str]
    customer: str | None = None  # provider customer id
    payment_method: str | None = None


@dataclass(frozen=True, slots=True)
class ProviderRefund:
    id: str
    payment_id: str | None  # the provider's PaymentIntent id
    amount: int
    currency: str
    status: str
    failure_reason: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ProviderPayment:
    id: str
    status: str
    amount: int
    currency: str
    capture_method: str
    # What the customer paid (PaymentIntent.amount_received); None when unknown.
    amount_captured: int | None
    amount_refunded: int | None
    failure_code: str | None = None
    failure_message: str | None = None
    client_secret: str | None = None
    next_action: Mapping[str, Any] | None = None
    charge_id: str | None = None
    payment_method: str | None = None
    customer: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    # Every refund of the payment when the provider listed them (retrieve), else None.
    refunds: tuple[ProviderRefund, ...] | None = None


@dataclass(frozen=True, slots=True)
class ProviderSetup:
    id: str
    status: str
    customer: str | None
    payment_method: str | None
    client_secret: str | None = None
    next_action: Mapping[str, Any] | None = None
    failure_code: str | None = None
    failure_message: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ProviderDispute:
    id: str
    payment_id: str | None
    charge_id: str | None
    amount: int
    currency: str
    status: str
    reason: str | None


@dataclass(frozen=True, slots=True)
class TransferRequest:
    """Money from the platform's balance to a connected account (Stripe Connect)."""

    amount: int
    currency: str  # ISO 4217, upper case
    destination: str  # the connected account: ``acct_...``
    # The domain's reference (``withdrawal:<id>:payout``): metadata and ``transfer_group``.
    reference: str
    metadata: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class ProviderTransfer:
    id: str
    amount: int
    currency: str
    destination: str | None
    # What was taken back from the connected account (reversals), in minor units.
    amount_reversed: int
    reference: str | None
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def reversed(self) -> bool:
        """Reversed in full or in part: the payee did not keep all of it."""
        return self.amount_reversed > 0


class PaymentProvider(Protocol):
    """One payment provider. Every call that creates or changes money takes an idempotency key:
    the same key with the same parameters returns the first result and moves no money again."""

    @property
    def name(self) -> str: ...

    @property
    def webhook_secret(self) -> str:
        """The secret that signs this provider's webhook events (empty rejects everything)."""
        ...

    async def aclose(self) -> None:
        """Releases what the provider holds (connection pools); called at shutdown."""
        ...

    async def ensure_customer(
        self, *, user_id: str, metadata: Mapping[str, str], idempotency_key: str
    ) -> str: ...

    async def create_payment(
        self, request: PaymentRequest, *, idempotency_key: str
    ) -> ProviderPayment: ...

    async def confirm_payment(
        self, payment_id: str, *, payment_method: str | None, idempotency_key: str
    ) -> ProviderPayment: ...

    async def charge_off_session(
        self, request: PaymentRequest, *, idempotency_key: str
    ) -> ProviderPayment:
        """Create and confirm in one call, the customer absent (a saved payment method)."""
        ...

    async def retrieve_payment(self, payment_id: str) -> ProviderPayment: ...

    async def capture_payment(
        self, payment_id: str, *, amount: int | None, idempotency_key: str
    ) -> ProviderPayment: ...

    async def cancel_payment(self, payment_id: str, *, idempotency_key: str) -> ProviderPayment: ...

    async def create_refund(
        self,
        payment_id: str,
        *,
        amount: int,
        reason: str | None,
        metadata: Mapping[str, str],
        idempotency_key: str,
    ) -> ProviderRefund: ...

    async def create_setup(
        self,
        *,
        customer: str,
        payment_method: str | None,
        metadata: Mapping[str, str],
        idempotency_key: str,
    ) -> ProviderSetup: ...

    async def retrieve_setup(self, setup_id: str) -> ProviderSetup: ...

    async def create_transfer(
        self, request: TransferRequest, *, idempotency_key: str
    ) -> ProviderTransfer:
        """Pays ``request.amount`` to a connected account. A refusal (the account cannot take
        transfers, the balance is short) is :class:`ProviderRejected`: nothing was paid."""
        ...

    async def retrieve_transfer(self, transfer_id: str) -> ProviderTransfer: ...

    async def find_transfers(self, reference: str) -> list[ProviderTransfer]:
        """The transfers made for ``reference`` (its ``transfer_group``), newest first: what a
        resumed payout looks for once the provider may have forgotten its idempotency key."""
        ...


def _str_map(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {str(k): str(v) for k, v in value.items()}


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else 0


def _error_fields(error: Any) -> tuple[str | None, str | None]:
    if not isinstance(error, Mapping):
        return None, None
    code = _opt_str(error.get("decline_code")) or _opt_str(error.get("code"))
    return code, _opt_str(error.get("message"))


def refund_from_object(obj: Mapping[str, Any]) -> ProviderRefund:
    return ProviderRefund(
        id=str(obj["id"]),
        payment_id=_opt_str(obj.get("payment_intent")),
        amount=_int(obj.get("amount")),
        currency=str(obj.get("currency") or "").upper(),
        status=str(obj.get("status") or "pending"),
        failure_reason=_opt_str(obj.get("failure_reason")),
        metadata=_str_map(obj.get("metadata")),
    )


_INTENT_STATUSES = frozenset(
    {
        "requires_payment_method",
        "requires_confirmation",
        "requires_action",
        "processing",
        "requires_capture",
        "canceled",
        "succeeded",
    }
)
# The fields we read from a PaymentIntent, and the types they may have when present.
_INTENT_FIELDS: dict[str, tuple[type, ...]] = {
    "id": (str,),
    "status": (str,),
    "amount": (int,),
    "amount_received": (int,),
    "amount_capturable": (int,),
    "currency": (str,),
    "capture_method": (str,),
    "client_secret": (str,),
    "metadata": (Mapping,),
    "latest_charge": (str, Mapping),
    "payment_method": (str, Mapping),
    "customer": (str, Mapping),
    "next_action": (Mapping,),
    "last_payment_error": (Mapping,),
}


def check_intent_shape(intent: Mapping[str, Any]) -> None:
    """Raises ValueError when a PaymentIntent's fields are not of the types Stripe documents:
    such a snapshot is not applied, whoever signed it."""
    for name, types in _INTENT_FIELDS.items():
        value = intent.get(name)
        if value is None:
            if name in ("id", "status"):
                raise ValueError(f"a PaymentIntent needs {name}")
            continue
        if not isinstance(value, types) or isinstance(value, bool):
            raise ValueError(f"PaymentIntent.{name} has the wrong type")
    if intent["status"] not in _INTENT_STATUSES:
        raise ValueError("PaymentIntent.status is not a known status")
    if any(intent.get(k, 0) < 0 for k in ("amount", "amount_received", "amount_capturable")):
        raise ValueError("a PaymentIntent amount is negative")


def payment_from_intent(  # noqa: PLR0912 - one branch per provider quirk, kept together
    intent: Mapping[str, Any], *, refunds: Sequence[Mapping[str, Any]] | None = None
) -> ProviderPayment:
    """A PaymentIntent (API response or webhook payload) as a :class:`ProviderPayment`.

    ``latest_charge`` is an id in webhook payloads and an object when expanded. Stripe
    reports ``amount_received`` and the charge's ``amount_captured``; localstripe has
    neither and books the released part of a partial capture as a refund without a
    ``payment_intent``. Those "refunds" are subtracted from the captured amount instead,
    so both report the same captured and refunded amounts.
    """
    check_intent_shape(intent)
    charge = intent.get("latest_charge")
    charge_obj: Mapping[str, Any] | None = charge if isinstance(charge, Mapping) else None
    charge_id = _opt_str(charge) if charge_obj is None else _opt_str(charge_obj.get("id"))
    status = str(intent["status"])

    refund_objs: Sequence[Mapping[str, Any]] | None = refunds
    if refund_objs is None and charge_obj is not None:
        embedded = charge_obj.get("refunds")
        if isinstance(embedded, Mapping) and isinstance(embedded.get("data"), list):
            refund_objs = [r for r in embedded["data"] if isinstance(r, Mapping)]
    released = 0
    own_refunds: list[ProviderRefund] | None = None
    if refund_objs is not None:
        own_refunds = []
        for obj in refund_objs:
            if obj.get("payment_intent") is None and "amount_received" not in intent:
                released += _int(obj.get("amount"))
            else:
                own_refunds.append(refund_from_object(obj))

    captured: int | None
    if "amount_received" in intent:
        captured = _int(intent.get("amount_received"))
    elif charge_obj is not None:
        if charge_obj.get("captured") and charge_obj.get("status") == "succeeded":
            captured = _int(charge_obj.get("amount")) - released
        else:
            captured = 0
    elif status == "succeeded":
        captured = None
    else:
        captured = 0

    refunded: int | None = None
    if own_refunds is not None:
        refunded = sum(r.amount for r in own_refunds if r.status in ("succeeded", "pending"))
    elif charge_obj is not None and "amount_captured" in charge_obj:
        refunded = _int(charge_obj.get("amount_refunded"))

    failure_code, failure_message = _error_fields(intent.get("last_payment_error"))
    next_action = intent.get("next_action")
    payment_method = intent.get("payment_method")
    if isinstance(payment_method, Mapping):
        payment_method = payment_method.get("id")
    customer = intent.get("customer")
    if isinstance(customer, Mapping):
        customer = customer.get("id")
    return ProviderPayment(
        id=str(intent["id"]),
        status=status,
        amount=_int(intent.get("amount")),
        currency=str(intent.get("currency") or "").upper(),
        capture_method=str(intent.get("capture_method") or "automatic"),
        amount_captured=captured,
        amount_refunded=refunded,
        failure_code=failure_code,
        failure_message=failure_message,
        client_secret=_opt_str(intent.get("client_secret")),
        next_action=dict(next_action) if isinstance(next_action, Mapping) else None,
        charge_id=charge_id,
        payment_method=_opt_str(payment_method),
        customer=_opt_str(customer),
        metadata=_str_map(intent.get("metadata")),
        refunds=tuple(own_refunds) if own_refunds is not None else None,
    )


def setup_from_intent(obj: Mapping[str, Any]) -> ProviderSetup:
    failure_code, failure_message = _error_fields(obj.get("last_setup_error"))
    payment_method = obj.get("payment_method")
    if isinstance(payment_method, Mapping):
        payment_method = payment_method.get("id")
    customer = obj.get("customer")
    if isinstance(customer, Mapping):
        customer = customer.get("id")
    next_action = obj.get("next_action")
    return ProviderSetup(
        id=str(obj["id"]),
        status=str(obj.get("status") or "requires_payment_method"),
        customer=_opt_str(customer),
        payment_method=_opt_str(payment_method),
        client_secret=_opt_str(obj.get("client_secret")),
        next_action=dict(next_action) if isinstance(next_action, Mapping) else None,
        failure_code=failure_code,
        failure_message=failure_message,
        metadata=_str_map(obj.get("metadata")),
    )


def dispute_from_object(obj: Mapping[str, Any]) -> ProviderDispute:
    charge = obj.get("charge")
    if isinstance(charge, Mapping):
        charge = charge.get("id")
    intent = obj.get("payment_intent")
    if isinstance(intent, Mapping):
        intent = intent.get("id")
    return ProviderDispute(
        id=str(obj["id"]),
        payment_id=_opt_str(intent),
        charge_id=_opt_str(charge),
        amount=_int(obj.get("amount")),
        currency=str(obj.get("currency") or "").upper(),
        status=str(obj.get("status") or "needs_response"),
        reason=_opt_str(obj.get("reason")),
    )


def transfer_from_object(obj: Mapping[str, Any]) -> ProviderTransfer:
    """A Transfer (API response or the object of a ``transfer.*`` event)."""
    destination = obj.get("destination")
    if isinstance(destination, Mapping):
        destination = destination.get("id")
    metadata = _str_map(obj.get("metadata"))
    amount = obj.get("amount")
    if not isinstance(amount, int) or isinstance(amount, bool) or amount < 0:
        raise ValueError("Transfer.amount is not an amount")
    reversed_amount = _int(obj.get("amount_reversed"))
    if obj.get("reversed") is True and reversed_amount == 0:
        reversed_amount = amount
    return ProviderTransfer(
        id=str(obj["id"]),
        amount=amount,
        currency=str(obj.get("currency") or "").upper(),
        destination=_opt_str(destination),
        amount_reversed=min(amount, reversed_amount),
        reference=metadata.get("reference") or _opt_str(obj.get("transfer_group")),
        metadata=metadata,
    )

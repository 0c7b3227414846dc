"""The simulated provider: Stripe's test mode, embedded, with no keys.

Its objects (PaymentIntents, charges, refunds, disputes, customers, SetupIntents, saved
payment methods) are Stripe-shaped JSON kept in the ``simulated_*`` tables of the owning
service's database, so they survive restarts and every replica sees the same ones. Its
calls run in their own transactions, as a remote provider's would: if the caller's
transaction rolls back, the simulated payment still happened, and the caller's retry with
the same idempotency key gets the first result back (as on Stripe).

Every change writes the event Stripe would send to a webhook endpoint subscribed to
:data:`WEBHOOK_EVENTS` into ``simulated_event``. The worker loop
settles pending outcomes (:meth:`SimulatedProvider.settle_due`) and delivers the events,
signed with the Stripe scheme and the simulated webhook secret, to the service's own
``POST /webhooks/stripe`` — the handler Stripe's events go through.

Test payment methods (``payment_method`` values) are listed in :data:`TEST_PAYMENT_METHODS`.
Payouts (Connect transfers) go to any ``acct_`` id; :data:`FAILING_PAYOUT_ACCOUNT` refuses
them, :data:`REVERSING_PAYOUT_ACCOUNT` takes them and reverses them after
``settle_seconds``.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from shared.db import autocommit_engine_for
from shared.payments import _repository as repo
from shared.payments._provider import (
    FAILING_PAYOUT_ACCOUNT,
    FAILING_PAYOUT_CODE,
    REVERSING_PAYOUT_ACCOUNT,
    WEBHOOK_EVENTS,
    PaymentRequest,
    ProviderError,
    ProviderNotFound,
    ProviderPayment,
    ProviderRefund,
    ProviderRejected,
    ProviderSetup,
    ProviderTransfer,
    ProviderUnavailable,
    TransferRequest,
    payment_from_intent,
    refund_from_object,
    setup_from_intent,
    transfer_from_object,
)
from shared.payments.tables import PaymentTables

__all__ = ["TEST_PAYMENT_METHODS", "SimulatedProvider", "TestPaymentMethod"]

Outcome = Literal["succeed", "decline", "action", "succeed_later", "fail_later", "dispute"]
T = TypeVar("T")

API_VERSION = "2025-01-27.simulated"
_DECLINE_MESSAGES = {
    "generic_decline": "Your card was declined.",
    "insufficient_funds": "Your card has insufficient funds.",
    "authentication_required": "Your card was declined. This transaction requires authentication.",
}


@dataclass(frozen=True, slots=True)
class TestPaymentMethod:
    token: str
    type: str  # card | wechat_pay | alipay
    outcome: Outcome
    decline_code: str | None = None
    # Whether saving it (SetupIntent) fails too; pm_card_chargeCustomerFail saves fine.
    setup_declines: bool = False
    # Whether saving an "action" card asks for 3D Secure; pm_card_alwaysAuthenticate saves
    # fine and then asks on every charge (off-session: declined, authentication_required).
    setup_needs_action: bool = True
    description: str = ""


_TEST_METHODS = (
    TestPaymentMethod("pm_card_visa", "card", "succeed", description="succeeds"),
    TestPaymentMethod("pm_card_mastercard", "card", "succeed", description="succeeds"),
    TestPaymentMethod(
        "pm_card_chargeDeclined",
        "card",
        "decline",
        "generic_decline",
        setup_declines=True,
        description="declined: card_declined (generic_decline)",
    ),
    TestPaymentMethod(
        "pm_card_visa_chargeDeclined",
        "card",
        "decline",
        "generic_decline",
        setup_declines=True,
        description="declined: card_declined (generic_decline)",
    ),
    TestPaymentMethod(
        "pm_card_chargeDeclinedInsufficientFunds",
        "card",
        "decline",
        "insufficient_funds",
        setup_declines=True,
        description="declined: insufficient_funds",
    ),
    TestPaymentMethod(
        "pm_card_visa_chargeDeclinedInsufficientFunds",
        "card",
        "decline",
        "insufficient_funds",
        setup_declines=True,
        description="declined: insufficient_funds",
    ),
    TestPaymentMethod(
        "pm_card_chargeCustomerFail",
        "card",
        "decline",
        "generic_decline",
        description="saves fine, every charge is declined (off-session failures)",
    ),
    TestPaymentMethod(
        "pm_card_authenticationRequired",
        "card",
        "action",
        description="requires 3D Secure (requires_action); declined off-session",
    ),
    TestPaymentMethod(
        "pm_card_threeDSecure2Required",
        "card",
        "action",
        description="requires 3D Secure (requires_action); declined off-session",
    ),
    TestPaymentMethod(
        "pm_card_alwaysAuthenticate",
        "card",
        "action",
        setup_needs_action=False,
        description="saves fine; every charge requires 3D Secure (declined off-session)",
    ),
    TestPaymentMethod(
        "pm_card_succeedLater",
        "card",
        "succeed_later",
        description="processing, then succeeds after SIMULATED_SETTLE_SECONDS",
    ),
    TestPaymentMethod(
        "pm_card_failLater",
        "card",
        "fail_later",
        "generic_decline",
        description="processing, then fails after SIMULATED_SETTLE_SECONDS",
    ),
    TestPaymentMethod(
        "pm_card_createDispute",
        "card",
        "dispute",
        description="succeeds, then the customer disputes it after SIMULATED_SETTLE_SECONDS",
    ),
    TestPaymentMethod(
        "pm_wechat_pay",
        "wechat_pay",
        "action",
        description="shows a WeChat Pay QR code (requires_action) until the customer acts",
    ),
    TestPaymentMethod(
        "pm_alipay",
        "alipay",
        "action",
        description="redirects to Alipay (requires_action) until the customer acts",
    ),
)
TEST_PAYMENT_METHODS: Mapping[str, TestPaymentMethod] = {m.token: m for m in _TEST_METHODS}


def _id(prefix: str) -> str:
    return f"{prefix}_sim_{secrets.token_hex(12)}"


def _now() -> datetime:
    return datetime.now(UTC)


class _KeyTaken(Exception):
    """A concurrent request with the same idempotency key committed first."""


def _request_hash(request: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(request, sort_keys=True, default=str).encode()).hexdigest()


def _next_action(method: TestPaymentMethod, intent_id: str) -> dict[str, Any]:
    if method.type == "wechat_pay":
        return {
            "type": "wechat_pay_display_qr_code",
            "wechat_pay_display_qr_code": {
                "data": f"weixin://wxpay/bizpayurl?pr=simulated-{intent_id}",
                "hosted_instructions_url": f"https://simulated.invalid/wechat/{intent_id}",
            },
        }
    if method.type == "alipay":
        return {
            "type": "alipay_handle_redirect",
            "alipay_handle_redirect": {"url": f"https://simulated.invalid/alipay/{intent_id}"},
        }
    return {"type": "use_stripe_sdk", "use_stripe_sdk": {"type": "three_d_secure_redirect"}}


class SimulatedProvider:
    name = "simulated"

    def __init__(
        self,
        *,
        sessionmaker: async_sessionmaker[AsyncSession],
        tables: PaymentTables,
        webhook_secret: str,
        settle_seconds: float = 3.0,
        engine: AsyncEngine | None = None,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._engine = engine
        # The same pool, each statement committing on its own (see ``_create``).
        bind = engine or sessionmaker.kw.get("bind")
        if not isinstance(bind, AsyncEngine):
            raise TypeError("the simulated provider needs a sessionmaker bound to an engine")
        self._autocommit = autocommit_engine_for(bind)
        self._t = tables
        self._webhook_secret = webhook_secret
        self.settle_seconds = settle_seconds

    async def aclose(self) -> None:
        """Releases its own connection pool, when it was given one to own."""
        if self._engine is not None:
            await self._engine.dispose()

    @property
    def webhook_secret(self) -> str:
        return self._webhook_secret

    # --- plumbing ---------------------------------------------------------------------

    async def _run(
        self,
        key: str | None,
        request: Mapping[str, Any],
        op: Callable[[AsyncSession], Awaitable[dict[str, Any]]],
    ) -> dict[str, Any]:
        """Runs ``op`` in its own transaction, once per idempotency key (as Stripe does).

        Optimistic: the key is recorded with the answer at the end of the transaction. A
        concurrent request with the same key waits on that row; when the first commits, the
        second rolls its own work back and answers what the first stored, also when its own
        run failed because the first had changed the object already."""
        digest = _request_hash(request) if key is not None else ""
        try:
            for attempt in (1, 2):
                try:
                    async with self._sessionmaker() as session, session.begin():
                        result = await op(session)
                        if key is None or await repo.sim_record_request(
                            session, self._t, key, digest, result
                        ):
                            return result
                        raise _KeyTaken()
                except DBAPIError as exc:
                    # Its pool does not ping before each checkout (three round trips a call):
                    # a connection the server dropped (a restart) fails instead, the pool is
                    # renewed, and a keyed request runs once more, as Stripe's SDK retries a
                    # request that failed on the network. Its key makes that safe (the first
                    # run committed: the second finds the key taken and answers the first's
                    # result); a request without a key is not run twice.
                    if key is None or attempt == 2 or not exc.connection_invalidated:
                        raise
            raise AssertionError("unreachable")
        except (_KeyTaken, ProviderError):
            if key is None:
                raise
            stored = await self._stored(key, digest)
            if stored is None:
                raise
            return stored

    async def _create(
        self, key: str, request: Mapping[str, Any], obj: dict[str, Any]
    ) -> dict[str, Any]:
        """As :meth:`_run` for a request that only creates ``obj`` (nothing read first, no
        event sent): one statement, committing on its own, that records the object with its
        key, or answers what the key's first request stored."""
        digest = _request_hash(request)
        for attempt in (1, 2):
            try:
                async with self._autocommit.connect() as conn:
                    if await repo.sim_create_with_request(
                        conn, self._t, obj, key=key, request_hash=digest
                    ):
                        return obj
                break
            except DBAPIError as exc:
                # A connection the server dropped, as in ``_run``: once more on a new one.
                if attempt == 2 or not exc.connection_invalidated:
                    raise
        # The key was taken: its first request committed (an INSERT that meets a key still
        # being written waits for that transaction, and inserts if it rolls back).
        stored = await self._stored(key, digest)
        if stored is None:  # a committed key is never deleted
            raise ProviderUnavailable("the simulated provider lost an idempotency key")
        return stored

    async def _stored(self, key: str, digest: str) -> dict[str, Any] | None:
        """The answer stored for ``key``, if any; refused when it was for another request."""
        async with self._sessionmaker() as session:
            stored = await repo.sim_stored_request(session, self._t, key)
        if stored is None:
            return None
        stored_hash, response = stored
        if stored_hash != digest:
            raise ProviderRejected(
                "Keys for idempotent requests can only be used with the same "
                "parameters they were first used with.",
                code="idempotency_key_in_use",
            )
        return response

    async def _read(self, read: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """A read, run once more if it met a connection the server dropped (see ``_run``)."""
        for attempt in (1, 2):
            try:
                async with self._sessionmaker() as session, session.begin():
                    return await read(session)
            except DBAPIError as exc:
                if attempt == 2 or not exc.connection_invalidated:
                    raise
        raise AssertionError("unreachable")

    async def _emit(self, session: AsyncSession, event_type: str, obj: Mapping[str, Any]) -> None:
        if event_type not in WEBHOOK_EVENTS:
            # As Stripe, for an endpoint that did not subscribe to it: never sent. (Stripe
            # would still list it under /v1/events; nothing here reads events that way.)
            return
        event_id = _id("evt")
        event = {
            "id": event_id,
            "object": "event",
            "api_version": API_VERSION,
            "created": int(time.time()),
            "livemode": False,
            "pending_webhooks": 1,
            "type": event_type,
            "data": {"object": dict(obj)},
        }
        # Its delivery job is woken (NOTIFY, in the same statement) when this commits.
        await repo.sim_insert_event(
            session,
            self._t,
            event_id=event_id,
            event_type=event_type,
            body=json.dumps(event, separators=(",", ":")),
        )

    async def _get(self, session: AsyncSession, object_id: str, object_type: str) -> dict[str, Any]:
        obj = await repo.sim_get(session, self._t, object_id, for_update=True)
        if obj is None or obj.get("object") != object_type:
            raise ProviderNotFound(f"No such {object_type}: '{object_id}'", code="resource_missing")
        return obj

    async def _method(self, session: AsyncSession, payment_method: str) -> TestPaymentMethod:
        known = TEST_PAYMENT_METHODS.get(payment_method)
        if known is not None:
            return known
        if payment_method.startswith("pm_sim_"):
            saved = await repo.sim_get(session, self._t, payment_method)
            if saved is not None:
                return TEST_PAYMENT_METHODS[str(saved["simulated_token"])]
        raise ProviderRejected(
            f"No such PaymentMethod: '{payment_method}'", code="resource_missing"
        )

    async def _check_method_type(
        self, session: AsyncSession, intent: Mapping[str, Any], payment_method: str
    ) -> TestPaymentMethod:
        method = await self._method(session, payment_method)
        if method.type not in intent["payment_method_types"]:
            raise ProviderRejected(
                f"The PaymentMethod provided ({method.type}) is not allowed for this "
                f"PaymentIntent ({', '.join(intent['payment_method_types'])}).",
                code="payment_intent_incompatible_payment_method",
            )
        return method

    async def _put_intent(
        self, session: AsyncSession, intent: dict[str, Any], *, settle_at: datetime | None = None
    ) -> None:
        await repo.sim_put(session, self._t, intent, settle_at=settle_at)

    # --- payments ---------------------------------------------------------------------

    async def ensure_customer(
        self, *, user_id: str, metadata: Mapping[str, str], idempotency_key: str
    ) -> str:
        async def op(session: AsyncSession) -> dict[str, Any]:
            customer = {
                "id": _id("cus"),
                "object": "customer",
                "created": int(time.time()),
                "livemode": False,
                "metadata": {**metadata, "qunbuy_user_id": user_id},
            }
            await repo.sim_put(session, self._t, customer)
            await self._emit(session, "customer.created", customer)
            return customer

        result = await self._run(idempotency_key, {"op": "customer", "user": user_id}, op)
        return str(result["id"])

    def _new_intent(self, request: PaymentRequest) -> dict[str, Any]:
        intent_id = _id("pi")
        return {
            "id": intent_id,
            "object": "payment_intent",
            "amount": request.amount,
            "amount_capturable": 0,
            "amount_received": 0,
            "canceled_at": None,
            "cancellation_reason": None,
            "capture_method": request.capture_method,
            "client_secret": f"{intent_id}_secret_{secrets.token_hex(12)}",
            "confirmation_method": "automatic",
            "created": int(time.time()),
            "currency": request.currency.lower(),
            "customer": request.customer,
            "last_payment_error": None,
            "latest_charge": None,
            "livemode": False,
            "metadata": dict(request.metadata),
            "next_action": None,
            "payment_method": request.payment_method,
            "payment_method_types": [request.method],
            "status": (
                "requires_confirmation" if request.payment_method else "requires_payment_method"
            ),
        }

    def _request_fields(self, request: PaymentRequest) -> dict[str, Any]:
        return {
            "amount": request.amount,
            "currency": request.currency,
            "method": request.method,
            "capture_method": request.capture_method,
            "metadata": dict(request.metadata),
            "customer": request.customer,
            "payment_method": request.payment_method,
        }

    async def create_payment(
        self, request: PaymentRequest, *, idempotency_key: str
    ) -> ProviderPayment:
        async def op(session: AsyncSession) -> dict[str, Any]:
            intent = self._new_intent(request)
            if request.payment_method:
                await self._check_method_type(session, intent, request.payment_method)
            await self._put_intent(session, intent)
            await self._emit(session, "payment_intent.created", intent)
            return intent

        fields = {"op": "create_payment", **self._request_fields(request)}
        if not request.payment_method and "payment_intent.created" not in WEBHOOK_EVENTS:
            # Nothing to check and nothing to send: the intent and its key, in one statement.
            intent = await self._create(idempotency_key, fields, self._new_intent(request))
            return payment_from_intent(intent)
        return payment_from_intent(await self._run(idempotency_key, fields, op))

    async def confirm_payment(
        self, payment_id: str, *, payment_method: str | None, idempotency_key: str
    ) -> ProviderPayment:
        async def op(session: AsyncSession) -> dict[str, Any]:
            intent = await self._get(session, payment_id, "payment_intent")
            if intent["status"] not in ("requires_payment_method", "requires_confirmation"):
                raise ProviderRejected(
                    "You cannot confirm this PaymentIntent because it has a status of "
                    f"{intent['status']}.",
                    code="payment_intent_unexpected_state",
                )
            if payment_method:
                await self._check_method_type(session, intent, payment_method)
                intent["payment_method"] = payment_method
            if not intent["payment_method"]:
                raise ProviderRejected(
                    "You cannot confirm this PaymentIntent because it has no payment method.",
                    code="payment_intent_unexpected_state",
                )
            return await self._attempt(session, intent, off_session=False)

        request = {"op": "confirm", "id": payment_id, "payment_method": payment_method}
        return payment_from_intent(await self._run(idempotency_key, request, op))

    async def charge_off_session(
        self, request: PaymentRequest, *, idempotency_key: str
    ) -> ProviderPayment:
        async def op(session: AsyncSession) -> dict[str, Any]:
            if not request.customer or not request.payment_method:
                raise ProviderRejected(
                    "An off-session payment needs a customer and a saved payment method.",
                    code="parameter_missing",
                )
            intent = self._new_intent(request)
            await self._check_method_type(session, intent, request.payment_method)
            if request.payment_method.startswith("pm_sim_"):
                saved = await repo.sim_get(session, self._t, request.payment_method)
                if saved is None or saved.get("customer") != request.customer:
                    raise ProviderRejected(
                        "The PaymentMethod is not attached to this customer.",
                        code="payment_method_not_attached",
                    )
            await self._emit(session, "payment_intent.created", intent)
            return await self._attempt(session, intent, off_session=True)

        fields = {"op": "off_session", **self._request_fields(request)}
        return payment_from_intent(await self._run(idempotency_key, fields, op))

    def _new_charge(self, intent: Mapping[str, Any], status: str) -> dict[str, Any]:
        return {
            "id": _id("ch"),
            "object": "charge",
            "amount": intent["amount"],
            "amount_captured": 0,
            "amount_refunded": 0,
            "captured": False,
            "created": int(time.time()),
            "currency": intent["currency"],
            "customer": intent["customer"],
            "disputed": False,
            "failure_code": None,
            "failure_message": None,
            "livemode": False,
            "metadata": {},
            "paid": False,
            "payment_intent": intent["id"],
            "payment_method": intent["payment_method"],
            "refunded": False,
            "status": status,
        }

    async def _attempt(
        self, session: AsyncSession, intent: dict[str, Any], *, off_session: bool
    ) -> dict[str, Any]:
        method = await self._method(session, str(intent["payment_method"]))
        intent["last_payment_error"] = None
        intent["next_action"] = None
        if method.outcome == "action":
            if off_session:
                charge = self._new_charge(intent, "failed")
                return await self._fail(
                    session,
                    intent,
                    charge,
                    None,
                    code="authentication_required",
                    message=_DECLINE_MESSAGES["authentication_required"],
                )
            intent["status"] = "requires_action"
            intent["next_action"] = _next_action(method, str(intent["id"]))
            await self._put_intent(session, intent)
            await self._emit(session, "payment_intent.requires_action", intent)
            return intent
        if method.outcome == "decline":
            charge = self._new_charge(intent, "failed")
            return await self._fail(session, intent, charge, method.decline_code)
        if method.outcome in ("succeed_later", "fail_later"):
            charge = self._new_charge(intent, "pending")
            await repo.sim_put(session, self._t, charge, parent_id=intent["id"])
            intent["latest_charge"] = charge["id"]
            intent["status"] = "processing"
            await self._put_intent(
                session, intent, settle_at=_now() + timedelta(seconds=self.settle_seconds)
            )
            await self._emit(session, "payment_intent.processing", intent)
            return intent
        charge = self._new_charge(intent, "pending")
        return await self._succeed(session, intent, charge, method)

    async def _succeed(
        self,
        session: AsyncSession,
        intent: dict[str, Any],
        charge: dict[str, Any],
        method: TestPaymentMethod,
    ) -> dict[str, Any]:
        charge.update(status="succeeded", paid=True)
        intent["latest_charge"] = charge["id"]
        intent["next_action"] = None
        dispute_at = None
        if intent["capture_method"] == "manual":
            intent["status"] = "requires_capture"
            intent["amount_capturable"] = intent["amount"]
        else:
            charge.update(captured=True, amount_captured=charge["amount"])
            intent["status"] = "succeeded"
            intent["amount_received"] = intent["amount"]
            if method.outcome == "dispute":
                dispute_at = _now() + timedelta(seconds=self.settle_seconds)
        await repo.sim_put(session, self._t, charge, parent_id=intent["id"], settle_at=dispute_at)
        await self._put_intent(session, intent)
        await self._emit(session, "charge.succeeded", charge)
        if intent["status"] == "requires_capture":
            await self._emit(session, "payment_intent.amount_capturable_updated", intent)
        else:
            await self._emit(session, "payment_intent.succeeded", intent)
        return intent

    async def _fail(
        self,
        session: AsyncSession,
        intent: dict[str, Any],
        charge: dict[str, Any] | None,
        decline_code: str | None,
        *,
        code: str = "card_declined",
        message: str | None = None,
    ) -> dict[str, Any]:
        decline = decline_code or "generic_decline"
        text = message or _DECLINE_MESSAGES.get(decline, "Your card was declined.")
        error: dict[str, Any] = {
            "type": "card_error",
            "code": code,
            "decline_code": decline_code if code == "card_declined" else None,
            "message": text,
            "payment_method": {"id": intent["payment_method"]},
        }
        if charge is not None:
            charge.update(status="failed", failure_code=code, failure_message=text)
            await repo.sim_put(session, self._t, charge, parent_id=intent["id"])
            intent["latest_charge"] = charge["id"]
            error["charge"] = charge["id"]
        intent.update(
            status="requires_payment_method",
            payment_method=None,
            next_action=None,
            last_payment_error=error,
        )
        await self._put_intent(session, intent)
        if charge is not None:
            await self._emit(session, "charge.failed", charge)
        await self._emit(session, "payment_intent.payment_failed", intent)
        return intent

    async def retrieve_payment(self, payment_id: str) -> ProviderPayment:
        async def read(session: AsyncSession) -> ProviderPayment:
            intent = await repo.sim_get(session, self._t, payment_id)
            if intent is None or intent.get("object") != "payment_intent":
                raise ProviderNotFound(
                    f"No such payment_intent: '{payment_id}'", code="resource_missing"
                )
            refunds = await repo.sim_children(session, self._t, payment_id, "refund")
            return payment_from_intent(intent, refunds=refunds)

        return await self._read(read)

    async def capture_payment(
        self, payment_id: str, *, amount: int | None, idempotency_key: str
    ) -> ProviderPayment:
        async def op(session: AsyncSession) -> dict[str, Any]:
            intent = await self._get(session, payment_id, "payment_intent")
            if intent["status"] != "requires_capture":
                raise ProviderRejected(
                    "This PaymentIntent could not be captured because it has a status of "
                    f"{intent['status']}.",
                    code="payment_intent_unexpected_state",
                )
            to_capture = intent["amount_capturable"] if amount is None else amount
            if not 0 < to_capture <= intent["amount_capturable"]:
                raise ProviderRejected(
                    "The amount to capture must be positive and at most the capturable "
                    f"amount ({intent['amount_capturable']}).",
                    code="amount_too_large",
                )
            charge = await self._get(session, str(intent["latest_charge"]), "charge")
            charge.update(captured=True, amount_captured=to_capture)
            intent.update(status="succeeded", amount_received=to_capture, amount_capturable=0)
            await repo.sim_put(session, self._t, charge, parent_id=intent["id"])
            await self._put_intent(session, intent)
            await self._emit(session, "charge.captured", charge)
            await self._emit(session, "payment_intent.succeeded", intent)
            return intent

        request = {"op": "capture", "id": payment_id, "amount": amount}
        return payment_from_intent(await self._run(idempotency_key, request, op))

    async def cancel_payment(self, payment_id: str, *, idempotency_key: str) -> ProviderPayment:
        async def op(session: AsyncSession) -> dict[str, Any]:
            intent = await self._get(session, payment_id, "payment_intent")
            cancelable = (
                "requires_payment_method",
                "requires_confirmation",
                "requires_action",
                "requires_capture",
            )
            if intent["status"] not in cancelable:
                raise ProviderRejected(
                    "You cannot cancel this PaymentIntent because it has a status of "
                    f"{intent['status']}.",
                    code="payment_intent_unexpected_state",
                )
            intent.update(
                status="canceled",
                canceled_at=int(time.time()),
                amount_capturable=0,
                next_action=None,
            )
            await self._put_intent(session, intent)
            await self._emit(session, "payment_intent.canceled", intent)
            return intent

        request = {"op": "cancel", "id": payment_id}
        return payment_from_intent(await self._run(idempotency_key, request, op))

    async def create_refund(
        self,
        payment_id: str,
        *,
        amount: int,
        reason: str | None,
        metadata: Mapping[str, str],
        idempotency_key: str,
    ) -> ProviderRefund:
        async def op(session: AsyncSession) -> dict[str, Any]:
            intent = await self._get(session, payment_id, "payment_intent")
            if intent["status"] != "succeeded":
                raise ProviderRejected(
                    "This PaymentIntent has no successful charge to refund.",
                    code="charge_not_refundable",
                )
            charge = await self._get(session, str(intent["latest_charge"]), "charge")
            remaining = int(charge["amount_captured"]) - int(charge["amount_refunded"])
            if amount <= 0 or amount > remaining:
                raise ProviderRejected(
                    f"Refund amount ({amount}) is greater than unrefunded amount on charge "
                    f"({remaining}).",
                    code="charge_already_refunded" if remaining == 0 else "amount_too_large",
                )
            refund = {
                "id": _id("re"),
                "object": "refund",
                "amount": amount,
                "charge": charge["id"],
                "created": int(time.time()),
                "currency": intent["currency"],
                "failure_reason": None,
                "metadata": dict(metadata),
                "payment_intent": intent["id"],
                "reason": reason,
                "status": "succeeded",
            }
            charge["amount_refunded"] = int(charge["amount_refunded"]) + amount
            charge["refunded"] = charge["amount_refunded"] == charge["amount_captured"]
            await repo.sim_put(session, self._t, refund, parent_id=intent["id"])
            await repo.sim_put(session, self._t, charge, parent_id=intent["id"])
            await self._emit(session, "refund.created", refund)
            await self._emit(session, "charge.refunded", charge)
            return refund

        request = {
            "op": "refund",
            "id": payment_id,
            "amount": amount,
            "reason": reason,
            "metadata": dict(metadata),
        }
        return refund_from_object(await self._run(idempotency_key, request, op))

    # --- saved payment methods ---------------------------------------------------------

    async def create_setup(
        self,
        *,
        customer: str,
        payment_method: str | None,
        metadata: Mapping[str, str],
        idempotency_key: str,
    ) -> ProviderSetup:
        async def op(session: AsyncSession) -> dict[str, Any]:
            owner = await repo.sim_get(session, self._t, customer)
            if owner is None or owner.get("object") != "customer":
                raise ProviderNotFound(f"No such customer: '{customer}'", code="resource_missing")
            setup_id = _id("seti")
            setup: dict[str, Any] = {
                "id": setup_id,
                "object": "setup_intent",
                "client_secret": f"{setup_id}_secret_{secrets.token_hex(12)}",
                "created": int(time.time()),
                "customer": customer,
                "last_setup_error": None,
                "livemode": False,
                "metadata": dict(metadata),
                "next_action": None,
                "payment_method": None,
                "payment_method_types": ["card"],
                "status": "requires_payment_method",
                "usage": "off_session",
            }
            await self._emit(session, "setup_intent.created", setup)
            if payment_method:
                method = await self._method(session, payment_method)
                if method.type != "card":
                    raise ProviderRejected(
                        "Only cards can be saved for later payments.",
                        code="payment_method_unsupported_type",
                    )
                if method.setup_declines:
                    decline = method.decline_code or "generic_decline"
                    setup["last_setup_error"] = {
                        "type": "card_error",
                        "code": "card_declined",
                        "decline_code": decline,
                        "message": _DECLINE_MESSAGES.get(decline, "Your card was declined."),
                    }
                    await repo.sim_put(session, self._t, setup)
                    await self._emit(session, "setup_intent.setup_failed", setup)
                    return setup
                if method.outcome == "action" and method.setup_needs_action:
                    setup.update(
                        status="requires_action",
                        payment_method=payment_method,
                        next_action=_next_action(method, setup_id),
                    )
                    await repo.sim_put(session, self._t, setup)
                    await self._emit(session, "setup_intent.requires_action", setup)
                    return setup
                saved = {
                    "id": _id("pm"),
                    "object": "payment_method",
                    "type": "card",
                    "customer": customer,
                    "created": int(time.time()),
                    "livemode": False,
                    "metadata": {},
                    "simulated_token": method.token,
                }
                await repo.sim_put(session, self._t, saved)
                setup.update(status="succeeded", payment_method=saved["id"])
                await repo.sim_put(session, self._t, setup)
                await self._emit(session, "setup_intent.succeeded", setup)
                return setup
            await repo.sim_put(session, self._t, setup)
            return setup

        request = {
            "op": "setup",
            "customer": customer,
            "payment_method": payment_method,
            "metadata": dict(metadata),
        }
        return setup_from_intent(await self._run(idempotency_key, request, op))

    async def retrieve_setup(self, setup_id: str) -> ProviderSetup:
        async def read(session: AsyncSession) -> dict[str, Any] | None:
            return await repo.sim_get(session, self._t, setup_id)

        setup = await self._read(read)
        if setup is None or setup.get("object") != "setup_intent":
            raise ProviderNotFound(f"No such setup_intent: '{setup_id}'", code="resource_missing")
        return setup_from_intent(setup)

    # --- payouts (Connect transfers) ------------------------------------------------------

    async def create_transfer(
        self, request: TransferRequest, *, idempotency_key: str
    ) -> ProviderTransfer:
        async def op(session: AsyncSession) -> dict[str, Any]:
            if not request.destination.startswith("acct_"):
                raise ProviderRejected(
                    f"No such destination: '{request.destination}'", code="resource_missing"
                )
            if request.destination == FAILING_PAYOUT_ACCOUNT:
                raise ProviderRejected(
                    "Your destination account needs to have at least one of the following "
                    "capabilities enabled: transfers, crypto_transfers, legacy_payments",
                    code=FAILING_PAYOUT_CODE,
                )
            transfer = {
                "id": _id("tr"),
                "object": "transfer",
                "amount": request.amount,
                "amount_reversed": 0,
                "created": int(time.time()),
                "currency": request.currency.lower(),
                "destination": request.destination,
                "livemode": False,
                "metadata": {**request.metadata, "reference": request.reference},
                "reversals": {"object": "list", "data": [], "has_more": False},
                "reversed": False,
                "transfer_group": request.reference,
            }
            later = request.destination == REVERSING_PAYOUT_ACCOUNT
            settle_at = _now() + timedelta(seconds=self.settle_seconds) if later else None
            await repo.sim_put(session, self._t, transfer, settle_at=settle_at)
            await self._emit(session, "transfer.created", transfer)
            return transfer

        fields = {
            "op": "transfer",
            "amount": request.amount,
            "currency": request.currency,
            "destination": request.destination,
            "reference": request.reference,
            "metadata": dict(request.metadata),
        }
        return transfer_from_object(await self._run(idempotency_key, fields, op))

    async def retrieve_transfer(self, transfer_id: str) -> ProviderTransfer:
        async with self._sessionmaker() as session:
            transfer = await repo.sim_get(session, self._t, transfer_id)
        if transfer is None or transfer.get("object") != "transfer":
            raise ProviderNotFound(f"No such transfer: '{transfer_id}'", code="resource_missing")
        return transfer_from_object(transfer)

    async def find_transfers(self, reference: str) -> list[ProviderTransfer]:
        async with self._sessionmaker() as session:
            found = await repo.sim_find(session, self._t, "transfer", "transfer_group", reference)
        return [transfer_from_object(t) for t in reversed(found)]

    async def _reverse_transfer(self, session: AsyncSession, transfer: dict[str, Any]) -> None:
        reversal = {
            "id": _id("trr"),
            "object": "transfer_reversal",
            "amount": int(transfer["amount"]) - int(transfer["amount_reversed"]),
            "created": int(time.time()),
            "currency": transfer["currency"],
            "metadata": {},
            "transfer": transfer["id"],
        }
        transfer["amount_reversed"] = transfer["amount"]
        transfer["reversed"] = True
        transfer["reversals"] = {"object": "list", "data": [reversal], "has_more": False}
        await repo.sim_put(session, self._t, transfer)
        await self._emit(session, "transfer.reversed", transfer)

    # --- what the customer and time do --------------------------------------------------

    async def complete_action(self, payment_id: str, *, succeed: bool) -> ProviderPayment:
        """The customer authenticates (3D Secure), scans the QR code or returns from Alipay;
        or fails to."""

        async def op(session: AsyncSession) -> dict[str, Any]:
            intent = await self._get(session, payment_id, "payment_intent")
            if intent["status"] != "requires_action":
                raise ProviderRejected(
                    "This PaymentIntent does not wait for a customer action (status "
                    f"{intent['status']}).",
                    code="payment_intent_unexpected_state",
                )
            if not succeed:
                return await self._fail(
                    session,
                    intent,
                    None,
                    None,
                    code="payment_intent_authentication_failure",
                    message="The provided PaymentMethod has failed authentication.",
                )
            method = await self._method(session, str(intent["payment_method"]))
            return await self._succeed(session, intent, self._new_charge(intent, "pending"), method)

        return payment_from_intent(await self._run(None, {}, op))

    async def settle_due(self, *, now: datetime | None = None) -> int:
        """Settles what is due: processing payments succeed or fail, disputes open, transfers
        to :data:`REVERSING_PAYOUT_ACCOUNT` are reversed."""
        async with self._sessionmaker() as session, session.begin():
            due = await repo.sim_claim_due(session, self._t, now or _now())
            for obj in due:
                if obj["object"] == "payment_intent":
                    await self._settle_intent(session, obj)
                elif obj["object"] == "charge":
                    await self._open_dispute(session, obj)
                elif obj["object"] == "transfer":
                    await self._reverse_transfer(session, obj)
        return len(due)

    async def _settle_intent(self, session: AsyncSession, intent: dict[str, Any]) -> None:
        if intent["status"] != "processing":
            await self._put_intent(session, intent)
            return
        method = await self._method(session, str(intent["payment_method"]))
        charge = await self._get(session, str(intent["latest_charge"]), "charge")
        if method.outcome == "fail_later":
            await self._fail(session, intent, charge, method.decline_code)
        else:
            await self._succeed(session, intent, charge, method)

    async def _open_dispute(self, session: AsyncSession, charge: dict[str, Any]) -> None:
        dispute = {
            "id": _id("dp"),
            "object": "dispute",
            "amount": charge["amount_captured"],
            "charge": charge["id"],
            "created": int(time.time()),
            "currency": charge["currency"],
            "livemode": False,
            "payment_intent": charge["payment_intent"],
            "reason": "fraudulent",
            "status": "needs_response",
        }
        charge["disputed"] = True
        await repo.sim_put(session, self._t, charge, parent_id=charge["payment_intent"])
        await repo.sim_put(session, self._t, dispute, parent_id=charge["payment_intent"])
        await self._emit(session, "charge.dispute.created", dispute)

    def signature_header(self, body: str, *, timestamp: int | None = None) -> str:
        if not self._webhook_secret:
            raise ValueError("refusing to sign events with an empty webhook secret")
        import stripe  # Stripe's own signing scheme; imported on first use (a large import)

        return str(
            stripe.WebhookSignature.generate_signature_header(
                body, self._webhook_secret, timestamp=timestamp
            )
        )

    async def next_due_in(self) -> float | None:
        async with self._sessionmaker() as session:
            return await repo.sim_next_due(session, self._t)

    async def deliver_events(
        self, post: Callable[[bytes, str], Awaitable[int]], *, limit: int = 50
    ) -> int:
        """POSTs due events with ``post(body, signature_header) -> HTTP status``."""
        async with self._sessionmaker() as session, session.begin():
            events = await repo.sim_claim_events(session, self._t, limit)
            for seq, body, attempts in events:
                error: str | None
                try:
                    status = await post(body.encode(), self.signature_header(body))
                    error = None if 200 <= status < 300 else f"HTTP {status}"
                except Exception as exc:  # delivery failures are retried, never raised
                    error = f"{type(exc).__name__}: {exc}"
                await repo.sim_settle_event(
                    session,
                    self._t,
                    seq,
                    error=error,
                    retry_in_seconds=min(600.0, 2.0**attempts),
                )
        return len(events)

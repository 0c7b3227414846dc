"""The Stripe provider: the official SDK's ``StripeClient`` and its async methods.

The async methods run on the SDK's httpx client (``stripe.HTTPXClient``), so no thread is
blocked. Each provider owns one client (a connection pool), closed by :meth:`aclose` from
the service's shutdown hook.

Calls are chosen to work on Stripe and on localstripe (the fake the tests run against):
a payment is created, then confirmed in a second call (its id is known before money
moves); an off-session charge is one create with ``confirm`` and ``off_session``; a
decline comes back as a 402 error, after which the intent is read again for its state.

Payouts are Stripe Connect transfers (``/v1/transfers``) from the platform's balance to a
connected account, grouped by the domain's reference (``transfer_group``). localstripe has
no Connect: the tests run against ``qunbuy.localstripe_connect``, localstripe with the few
transfer routes added (docs/payments.md, "Payouts").
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar, cast

import stripe
from stripe.params import (
    CustomerCreateParams,
    PaymentIntentCaptureParams,
    PaymentIntentConfirmParams,
    PaymentIntentCreateParams,
    RefundCreateParams,
    SetupIntentConfirmParams,
    SetupIntentCreateParams,
    TransferCreateParams,
)

from shared.payments._provider import (
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
from shared.payments._settings import STRIPE_API_VERSION

__all__ = ["STRIPE_API_VERSION", "StripeHTTPClient", "StripeProvider"]


T = TypeVar("T")
_EXPAND = ["latest_charge"]


class StripeHTTPClient(stripe.HTTPXClient):
    """The SDK's httpx client, sending the form body as ``content``: the SDK passes it as
    ``data``, which httpx deprecates for raw text (and will refuse)."""

    def _get_request_args_kwargs(
        self, method: str, url: str, headers: Mapping[str, str], post_data: Any
    ) -> list[Any]:
        args, kwargs = super()._get_request_args_kwargs(method, url, headers, post_data)
        data = kwargs.pop("data", None)
        if isinstance(data, str | bytes):
            kwargs["content"] = data
        elif data:
            kwargs["data"] = data
        return [args, kwargs]

    async def aclose(self) -> None:
        await self.close_async()  # type: ignore[no-untyped-call]  # the SDK leaves it untyped


def _as_dict(obj: Any) -> dict[str, Any]:
    if isinstance(obj, stripe.StripeObject):
        return obj.to_dict()
    if isinstance(obj, Mapping):
        return dict(obj)
    raise ProviderError(f"unexpected response from Stripe: {type(obj).__name__}")


def _translate(exc: stripe.StripeError) -> ProviderError:
    message = exc.user_message or str(exc) or type(exc).__name__
    code = exc.code
    if isinstance(exc, stripe.IdempotencyError):
        return ProviderRejected(message, code=code or "idempotency_error")
    if isinstance(exc, stripe.InvalidRequestError):
        if exc.http_status == 404:
            return ProviderNotFound(message, code=code or "resource_missing")
        return ProviderRejected(message, code=code)
    if isinstance(exc, stripe.CardError):
        return ProviderRejected(message, code=code or "card_declined")
    return ProviderUnavailable(message, code=code)


def _error_objects(exc: stripe.StripeError) -> tuple[str | None, str | None]:
    """(payment intent id, charge id) named by a decline error, when it names them."""
    body = exc.json_body if isinstance(exc.json_body, Mapping) else {}
    error = body.get("error") if isinstance(body.get("error"), Mapping) else {}
    assert isinstance(error, Mapping)
    intent = error.get("payment_intent")
    if isinstance(intent, Mapping):
        intent = intent.get("id")
    charge = error.get("charge")
    return (
        intent if isinstance(intent, str) else None,
        charge if isinstance(charge, str) else None,
    )


class StripeProvider:
    name = "stripe"

    def __init__(
        self,
        *,
        api_key: str,
        webhook_secret: str,
        api_base: str | None = None,
        max_network_retries: int = 2,
        timeout_seconds: float = 30.0,
        api_version: str = STRIPE_API_VERSION,
        http_client: stripe.HTTPClient | None = None,
    ) -> None:
        if not api_key:
            raise ValueError("the Stripe provider needs an API key")
        self._webhook_secret = webhook_secret
        # A given HTTP client (tests record requests with one) stays its owner's to close.
        self._owns_http = http_client is None
        self._http = http_client or StripeHTTPClient(timeout=timeout_seconds)
        self._client = stripe.StripeClient(
            api_key,
            stripe_version=api_version,
            base_addresses={"api": api_base} if api_base else None,
            http_client=self._http,
            max_network_retries=max_network_retries,
        )

    @property
    def webhook_secret(self) -> str:
        return self._webhook_secret

    @property
    def client(self) -> stripe.StripeClient:
        return self._client

    async def aclose(self) -> None:
        if self._owns_http and isinstance(self._http, StripeHTTPClient):
            await self._http.aclose()

    async def _call(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except stripe.StripeError as exc:
            raise _translate(exc) from exc

    async def ensure_customer(
        self, *, user_id: str, metadata: Mapping[str, str], idempotency_key: str
    ) -> str:
        params: CustomerCreateParams = {"metadata": {**metadata, "qunbuy_user_id": user_id}}
        customer = await self._call(
            self.client.v1.customers.create_async(
                params, options={"idempotency_key": idempotency_key}
            )
        )
        return str(customer.id)

    def _intent_params(self, request: PaymentRequest) -> PaymentIntentCreateParams:
        params: dict[str, Any] = {
            "amount": request.amount,
            "currency": request.currency.lower(),
            # The pinned API version's name (the SDK's types know the newer one only).
            "payment_method_types": [request.method],
            "capture_method": request.capture_method,
            "metadata": dict(request.metadata),
            "expand": _EXPAND,
        }
        if request.customer:
            params["customer"] = request.customer
        if request.payment_method:
            params["payment_method"] = request.payment_method
        return cast(PaymentIntentCreateParams, params)

    async def _intent(self, payment_id: str) -> ProviderPayment:
        intent = await self._call(
            self.client.v1.payment_intents.retrieve_async(payment_id, {"expand": _EXPAND})
        )
        return payment_from_intent(_as_dict(intent))

    async def create_payment(
        self, request: PaymentRequest, *, idempotency_key: str
    ) -> ProviderPayment:
        intent = await self._call(
            self.client.v1.payment_intents.create_async(
                self._intent_params(request), options={"idempotency_key": idempotency_key}
            )
        )
        return payment_from_intent(_as_dict(intent))

    async def confirm_payment(
        self, payment_id: str, *, payment_method: str | None, idempotency_key: str
    ) -> ProviderPayment:
        if payment_method:
            # Set first, then confirm without it: localstripe cannot confirm with a new
            # payment method, Stripe accepts both ways.
            await self._call(
                self.client.v1.payment_intents.update_async(
                    payment_id,
                    {"payment_method": payment_method},
                    options={"idempotency_key": f"{idempotency_key}:payment_method"},
                )
            )
        params: PaymentIntentConfirmParams = {"expand": _EXPAND}
        try:
            intent = await self.client.v1.payment_intents.confirm_async(
                payment_id, params, options={"idempotency_key": idempotency_key}
            )
        except stripe.CardError:
            return await self._intent(payment_id)
        except stripe.StripeError as exc:
            raise _translate(exc) from exc
        return payment_from_intent(_as_dict(intent))

    async def charge_off_session(
        self, request: PaymentRequest, *, idempotency_key: str
    ) -> ProviderPayment:
        params = self._intent_params(request)
        params["confirm"] = True
        params["off_session"] = True
        try:
            intent = await self.client.v1.payment_intents.create_async(
                params, options={"idempotency_key": idempotency_key}
            )
        except stripe.CardError as exc:
            intent_id, charge_id = _error_objects(exc)
            if intent_id is None and charge_id is not None:
                charge = await self._call(self.client.v1.charges.retrieve_async(charge_id))
                found = _as_dict(charge).get("payment_intent")
                intent_id = found if isinstance(found, str) else None
            if intent_id is None:
                raise _translate(exc) from exc
            return await self._intent(intent_id)
        except stripe.StripeError as exc:
            raise _translate(exc) from exc
        return payment_from_intent(_as_dict(intent))

    async def retrieve_payment(self, payment_id: str) -> ProviderPayment:
        intent = _as_dict(
            await self._call(
                self.client.v1.payment_intents.retrieve_async(payment_id, {"expand": _EXPAND})
            )
        )
        refunds: list[Mapping[str, Any]] = []
        if intent.get("latest_charge"):
            listed = await self._call(
                self.client.v1.refunds.list_async({"payment_intent": payment_id, "limit": 100})
            )
            refunds = [_as_dict(r) for r in listed.data]
        return payment_from_intent(intent, refunds=refunds)

    async def capture_payment(
        self, payment_id: str, *, amount: int | None, idempotency_key: str
    ) -> ProviderPayment:
        params: PaymentIntentCaptureParams = {"expand": _EXPAND}
        if amount is not None:
            params["amount_to_capture"] = amount
        intent = await self._call(
            self.client.v1.payment_intents.capture_async(
                payment_id, params, options={"idempotency_key": idempotency_key}
            )
        )
        return payment_from_intent(_as_dict(intent))

    async def cancel_payment(self, payment_id: str, *, idempotency_key: str) -> ProviderPayment:
        intent = await self._call(
            self.client.v1.payment_intents.cancel_async(
                payment_id, {"expand": _EXPAND}, options={"idempotency_key": idempotency_key}
            )
        )
        return payment_from_intent(_as_dict(intent))

    async def create_refund(
        self,
        payment_id: str,
        *,
        amount: int,
        reason: str | None,
        metadata: Mapping[str, str],
        idempotency_key: str,
    ) -> ProviderRefund:
        # The reason travels in metadata: localstripe refuses Stripe's ``reason`` field.
        params: RefundCreateParams = {
            "payment_intent": payment_id,
            "amount": amount,
            "metadata": {**metadata, **({"qunbuy_reason": reason} if reason else {})},
        }
        refund = await self._call(
            self.client.v1.refunds.create_async(
                params, options={"idempotency_key": idempotency_key}
            )
        )
        return refund_from_object(_as_dict(refund))

    async def create_setup(
        self,
        *,
        customer: str,
        payment_method: str | None,
        metadata: Mapping[str, str],
        idempotency_key: str,
    ) -> ProviderSetup:
        params = cast(
            SetupIntentCreateParams,
            {
                "customer": customer,
                "usage": "off_session",
                "payment_method_types": ["card"],
                "metadata": dict(metadata),
            },
        )
        setup = await self._call(
            self.client.v1.setup_intents.create_async(
                params, options={"idempotency_key": idempotency_key}
            )
        )
        if not payment_method:
            return setup_from_intent(_as_dict(setup))
        confirm: SetupIntentConfirmParams = {"payment_method": payment_method}
        try:
            confirmed = await self.client.v1.setup_intents.confirm_async(
                str(setup.id), confirm, options={"idempotency_key": f"{idempotency_key}:confirm"}
            )
        except stripe.CardError as exc:
            current = setup_from_intent(
                _as_dict(await self._call(self.client.v1.setup_intents.retrieve_async(setup.id)))
            )
            if current.failure_code is not None:
                return current
            # localstripe cancels a declined setup without recording why; Stripe records it.
            return ProviderSetup(
                id=current.id,
                status=current.status,
                customer=current.customer,
                payment_method=current.payment_method,
                client_secret=current.client_secret,
                next_action=current.next_action,
                failure_code=exc.code or "card_declined",
                failure_message=exc.user_message,
                metadata=current.metadata,
            )
        except stripe.StripeError as exc:
            raise _translate(exc) from exc
        return setup_from_intent(_as_dict(confirmed))

    async def retrieve_setup(self, setup_id: str) -> ProviderSetup:
        setup = await self._call(self.client.v1.setup_intents.retrieve_async(setup_id))
        return setup_from_intent(_as_dict(setup))

    async def create_transfer(
        self, request: TransferRequest, *, idempotency_key: str
    ) -> ProviderTransfer:
        params: TransferCreateParams = {
            "amount": request.amount,
            "currency": request.currency.lower(),
            "destination": request.destination,
            "transfer_group": request.reference,
            "metadata": {**request.metadata, "reference": request.reference},
        }
        transfer = await self._call(
            self.client.v1.transfers.create_async(
                params, options={"idempotency_key": idempotency_key}
            )
        )
        return transfer_from_object(_as_dict(transfer))

    async def retrieve_transfer(self, transfer_id: str) -> ProviderTransfer:
        transfer = await self._call(self.client.v1.transfers.retrieve_async(transfer_id))
        return transfer_from_object(_as_dict(transfer))

    async def find_transfers(self, reference: str) -> list[ProviderTransfer]:
        listed = await self._call(
            self.client.v1.transfers.list_async({"transfer_group": reference, "limit": 100})
        )
        return [transfer_from_object(_as_dict(t)) for t in listed.data]

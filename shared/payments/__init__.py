"""Payments: one interface, two providers (Stripe, simulated), chosen by configuration.

A service that takes payments:

- adds the tables: ``payments = define_payment_tables(metadata)`` in its models;
- inherits its settings from :class:`PaymentSettings` (``PAYMENT_PROVIDER``...);
- mounts ``payments_router()`` and/or ``webhook_router()`` and registers
  ``install_payments(payments)`` in ``on_startup``, ``close_payments`` in ``on_shutdown``
  and ``run_simulated_provider`` in ``periodic``;
- calls the service functions (``create_payment``, ``charge_off_session``,
  ``refund_payment``..., and ``pay_out`` for a payout to a connected account) with
  ``payment_context(app)`` from its own domain code; a domain that records a payment's
  intent in a statement of its own change builds it from ``payment_intent`` (the row) and
  ``insert_intent_after`` (the SQL), then calls ``start_payment``.

Amounts are integer minor units with an ISO 4217 currency. Every provider call that
creates or moves money carries an idempotency key derived from our object and the action
(:func:`idempotency_key`). docs/payments.md has the configuration, the test payment
methods and the state machine. The Stripe provider (``shared.payments._stripe``) is imported
only when it is configured: the SDK is a large import that the simulated default never needs.
"""

from shared.payments._errors import (
    CaptureAmountInvalid,
    CaptureMethodUnsupported,
    PaymentAmountAboveMaximum,
    PaymentAmountInvalid,
    PaymentDeclined,
    PaymentError,
    PaymentMethodUnavailable,
    PaymentNotCancelable,
    PaymentNotCapturable,
    PaymentNotConfirmable,
    PaymentNotFound,
    PaymentNotRefundable,
    PaymentProviderRejected,
    PaymentProviderUnavailable,
    PaymentReferenceReserved,
    PaymentSetupNotFound,
    PaymentSetupNotUsable,
    PaymentSimulationUnavailable,
    PaymentsNotConfigured,
    PayoutAccountInvalid,
    RefundAmountInvalid,
    RefundExceedsRefundable,
    WebhookPayloadInvalid,
    WebhookSignatureInvalid,
)
from shared.payments._hooks import (
    PaymentChange,
    PaymentHook,
    PaymentHooks,
    PayoutChange,
    PayoutHook,
    domain_reference,
    parse_domain_reference,
)
from shared.payments._messages import customer_message
from shared.payments._payments import (
    cancel_payment,
    capture_payment,
    complete_simulated_action,
    confirm_payment,
    create_payment,
    get_payment,
    get_payment_view,
    payment_intent,
    record_payment,
    refund_payment,
    start_payment,
)
from shared.payments._payouts import PAYOUT_ACCOUNT_PATTERN, Payout, check_payout_account, pay_out
from shared.payments._provider import (
    FAILING_PAYOUT_ACCOUNT,
    FAILING_PAYOUT_CODE,
    REVERSING_PAYOUT_ACCOUNT,
    WEBHOOK_EVENTS,
    PaymentProvider,
    PaymentRequest,
    ProviderDispute,
    ProviderError,
    ProviderNotFound,
    ProviderPayment,
    ProviderRefund,
    ProviderRejected,
    ProviderSetup,
    ProviderTransfer,
    ProviderUnavailable,
    TransferRequest,
)
from shared.payments._reconcile import reconcile
from shared.payments._repository import (
    PaymentRow,
    RefundRow,
    SetupRow,
    StatusChangeRow,
    insert_intent_after,
    intent_params,
    payment_of,
)
from shared.payments._router import payments_router, simulated_router, webhook_router
from shared.payments._settings import PaymentSettings
from shared.payments._setups import charge_off_session, create_setup, get_setup
from shared.payments._simulated import TEST_PAYMENT_METHODS, SimulatedProvider, TestPaymentMethod
from shared.payments._state import (
    Discrepancy,
    PaymentContext,
    PaymentView,
    idempotency_key,
    new_payment_id,
    new_setup_id,
)
from shared.payments._webhook_handlers import apply_webhook_event
from shared.payments._webhooks import SIGNATURE_HEADER, handle_webhook, verify_signature
from shared.payments._wiring import (
    WEBHOOK_PATH,
    build_provider,
    close_payments,
    install_payments,
    make_context,
    payment_context,
    run_simulated_provider,
)
from shared.payments.tables import PaymentTables, define_payment_tables

__all__ = [
    "FAILING_PAYOUT_ACCOUNT",
    "FAILING_PAYOUT_CODE",
    "PAYOUT_ACCOUNT_PATTERN",
    "REVERSING_PAYOUT_ACCOUNT",
    "SIGNATURE_HEADER",
    "TEST_PAYMENT_METHODS",
    "WEBHOOK_EVENTS",
    "WEBHOOK_PATH",
    "CaptureAmountInvalid",
    "CaptureMethodUnsupported",
    "Discrepancy",
    "PaymentAmountAboveMaximum",
    "PaymentAmountInvalid",
    "PaymentChange",
    "PaymentContext",
    "PaymentDeclined",
    "PaymentError",
    "PaymentHook",
    "PaymentHooks",
    "PaymentMethodUnavailable",
    "PaymentNotCancelable",
    "PaymentNotCapturable",
    "PaymentNotConfirmable",
    "PaymentNotFound",
    "PaymentNotRefundable",
    "PaymentProvider",
    "PaymentProviderRejected",
    "PaymentProviderUnavailable",
    "PaymentReferenceReserved",
    "PaymentRequest",
    "PaymentRow",
    "PaymentSettings",
    "PaymentSetupNotFound",
    "PaymentSetupNotUsable",
    "PaymentSimulationUnavailable",
    "PaymentTables",
    "PaymentView",
    "PaymentsNotConfigured",
    "Payout",
    "PayoutAccountInvalid",
    "PayoutChange",
    "PayoutHook",
    "ProviderDispute",
    "ProviderError",
    "ProviderNotFound",
    "ProviderPayment",
    "ProviderRefund",
    "ProviderRejected",
    "ProviderSetup",
    "ProviderTransfer",
    "ProviderUnavailable",
    "RefundAmountInvalid",
    "RefundExceedsRefundable",
    "RefundRow",
    "SetupRow",
    "SimulatedProvider",
    "StatusChangeRow",
    "TestPaymentMethod",
    "TransferRequest",
    "WebhookPayloadInvalid",
    "WebhookSignatureInvalid",
    "apply_webhook_event",
    "build_provider",
    "cancel_payment",
    "capture_payment",
    "charge_off_session",
    "check_payout_account",
    "close_payments",
    "complete_simulated_action",
    "confirm_payment",
    "create_payment",
    "create_setup",
    "customer_message",
    "define_payment_tables",
    "domain_reference",
    "get_payment",
    "get_payment_view",
    "get_setup",
    "handle_webhook",
    "idempotency_key",
    "insert_intent_after",
    "install_payments",
    "intent_params",
    "make_context",
    "new_payment_id",
    "new_setup_id",
    "parse_domain_reference",
    "pay_out",
    "payment_context",
    "payment_intent",
    "payment_of",
    "payments_router",
    "reconcile",
    "record_payment",
    "refund_payment",
    "run_simulated_provider",
    "simulated_router",
    "start_payment",
    "verify_signature",
    "webhook_router",
]

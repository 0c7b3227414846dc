"""The payment layer's expected failures, each a problem+json with a stable code.

Exception tree::

    DomainError
     +-- PaymentError (422 ``payment_error``)
     |    +-- PaymentAmountInvalid          422 ``payment_amount_invalid``
     |    +-- PaymentAmountAboveMaximum     422 ``payment_amount_above_maximum``
     |    +-- CaptureMethodUnsupported      422 ``capture_method_unsupported``
     |    +-- CaptureAmountInvalid          422 ``capture_amount_invalid``
     |    +-- RefundAmountInvalid           422 ``refund_amount_invalid``
     |    +-- RefundExceedsRefundable       422 ``refund_exceeds_refundable``
     |    +-- PaymentMethodUnavailable      422 ``payment_method_unavailable``
     +-- PaymentReferenceReserved           422 ``payment_reference_reserved``
     +-- PayoutAccountInvalid               422 ``payout_account_invalid``
     +-- PaymentDeclined                    402 ``payment_declined``
     +-- PaymentNotFound                    404 ``payment_not_found``
     +-- PaymentSetupNotFound               404 ``payment_setup_not_found``
     +-- PaymentSimulationUnavailable       404 ``payment_simulation_unavailable``
     +-- PaymentStateConflict (409)
     |    +-- PaymentNotConfirmable         409 ``payment_not_confirmable``
     |    +-- PaymentNotCapturable          409 ``payment_not_capturable``
     |    +-- PaymentNotCancelable          409 ``payment_not_cancelable``
     |    +-- PaymentNotRefundable          409 ``payment_not_refundable``
     |    +-- PaymentSetupNotUsable         409 ``payment_setup_not_usable``
     |    +-- PaymentProviderRejected       409 ``payment_provider_rejected``
     +-- WebhookSignatureInvalid            400 ``webhook_signature_invalid``
     +-- WebhookPayloadInvalid              400 ``webhook_payload_invalid``
     +-- PaymentProviderUnavailable         503 ``payment_provider_unavailable``
     +-- PaymentsNotConfigured              503 ``payments_not_configured``

``unknown_currency`` (422) comes from :mod:`shared.money`.
"""

from __future__ import annotations

from shared.errors import Conflict, DomainError, NotFound

__all__ = [
    "CaptureAmountInvalid",
    "CaptureMethodUnsupported",
    "PaymentAmountAboveMaximum",
    "PaymentAmountInvalid",
    "PaymentDeclined",
    "PaymentError",
    "PaymentMethodUnavailable",
    "PaymentNotCancelable",
    "PaymentNotCapturable",
    "PaymentNotConfirmable",
    "PaymentNotFound",
    "PaymentNotRefundable",
    "PaymentProviderRejected",
    "PaymentProviderUnavailable",
    "PaymentReferenceReserved",
    "PaymentSetupNotFound",
    "PaymentSetupNotUsable",
    "PaymentSimulationUnavailable",
    "PaymentStateConflict",
    "PaymentsNotConfigured",
    "PayoutAccountInvalid",
    "RefundAmountInvalid",
    "RefundExceedsRefundable",
    "WebhookPayloadInvalid",
    "WebhookSignatureInvalid",
]


class PaymentError(DomainError):
    status = 422
    code = "payment_error"
    title = "The payment request is not valid"


class PaymentAmountInvalid(PaymentError):
    code = "payment_amount_invalid"
    title = "The amount must be a positive integer of minor units"


class PaymentAmountAboveMaximum(PaymentError):
    code = "payment_amount_above_maximum"
    title = "The amount is above the maximum this platform accepts"


class CaptureMethodUnsupported(PaymentError):
    code = "capture_method_unsupported"
    title = "This payment method cannot be authorized now and captured later"


class CaptureAmountInvalid(PaymentError):
    code = "capture_amount_invalid"
    title = "The amount to capture must be positive and at most the authorized amount"


class RefundAmountInvalid(PaymentError):
    code = "refund_amount_invalid"
    title = "The refund amount must be a positive integer of minor units"


class RefundExceedsRefundable(PaymentError):
    code = "refund_exceeds_refundable"
    title = "The refund is larger than what remains refundable"


class PaymentMethodUnavailable(PaymentError):
    """A saved payment method of another customer, or one that does not exist: the answer is
    the same, so that nobody learns which payment methods others have saved."""

    code = "payment_method_unavailable"
    title = "This payment method cannot be used"


class PaymentReferenceReserved(DomainError):
    status = 422
    code = "payment_reference_reserved"
    title = "Payments for this reference are made by its own domain (for example, an order)"


class PayoutAccountInvalid(DomainError):
    status = 422
    code = "payout_account_invalid"
    title = "A payout account is a Stripe connected account id: acct_ and 6 to 64 letters or digits"


class PaymentDeclined(DomainError):
    status = 402
    code = "payment_declined"
    title = "The payment was declined"


class PaymentNotFound(NotFound):
    code = "payment_not_found"
    title = "No such payment"


class PaymentSetupNotFound(NotFound):
    code = "payment_setup_not_found"
    title = "No such saved payment method"


class PaymentSimulationUnavailable(NotFound):
    code = "payment_simulation_unavailable"
    title = "Customer actions can only be simulated with the simulated provider"


class PaymentStateConflict(Conflict):
    code = "payment_state_conflict"
    title = "The payment is not in a state that allows this"


class PaymentNotConfirmable(PaymentStateConflict):
    code = "payment_not_confirmable"
    title = "This payment can no longer be confirmed"


class PaymentNotCapturable(PaymentStateConflict):
    code = "payment_not_capturable"
    title = "This payment has no authorization to capture"


class PaymentNotCancelable(PaymentStateConflict):
    code = "payment_not_cancelable"
    title = "This payment can no longer be canceled"


class PaymentNotRefundable(PaymentStateConflict):
    code = "payment_not_refundable"
    title = "This payment has not been paid, so nothing can be refunded"


class PaymentSetupNotUsable(PaymentStateConflict):
    code = "payment_setup_not_usable"
    title = "This saved payment method cannot be charged"


class PaymentProviderRejected(PaymentStateConflict):
    code = "payment_provider_rejected"
    title = "The payment provider refused the request"


class WebhookSignatureInvalid(DomainError):
    status = 400
    code = "webhook_signature_invalid"
    title = "The webhook signature is missing, stale or does not verify"


class WebhookPayloadInvalid(DomainError):
    status = 400
    code = "webhook_payload_invalid"
    title = "The webhook body is not a provider event"


class PaymentProviderUnavailable(DomainError):
    status = 503
    code = "payment_provider_unavailable"
    title = "The payment provider cannot be reached; retry with the same Idempotency-Key"


class PaymentsNotConfigured(DomainError):
    status = 503
    code = "payments_not_configured"
    title = "Payments are not configured in this process (set PAYMENT_PROVIDER)"

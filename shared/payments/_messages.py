"""What a customer is told when a payment fails, in plain words.

Provider messages are written for developers and sometimes say too much ("stolen_card"
must never reach the person holding the card), so the customer sees these instead. The
provider's own code stays in ``failure_code`` for support staff.
"""

from __future__ import annotations

__all__ = ["customer_message"]

_TRY_ANOTHER = "Please try again with a different card or payment method."
_MESSAGES = {
    "insufficient_funds": f"Your card does not have enough funds for this payment. {_TRY_ANOTHER}",
    "card_declined": f"Your card was declined. {_TRY_ANOTHER}",
    "generic_decline": f"Your card was declined. {_TRY_ANOTHER}",
    "do_not_honor": f"Your card was declined. {_TRY_ANOTHER}",
    "lost_card": f"Your card was declined. {_TRY_ANOTHER}",
    "stolen_card": f"Your card was declined. {_TRY_ANOTHER}",
    "fraudulent": f"Your card was declined. {_TRY_ANOTHER}",
    "pickup_card": f"Your card was declined. {_TRY_ANOTHER}",
    "expired_card": f"Your card has expired. {_TRY_ANOTHER}",
    "incorrect_cvc": "The card's security code is incorrect. Please check it and try again.",
    "incorrect_number": "The card number is incorrect. Please check it and try again.",
    "card_velocity_exceeded": (f"Your card has reached its spending limit for now. {_TRY_ANOTHER}"),
    "processing_error": (
        "Something went wrong while processing your card. Please try again in a moment."
    ),
    "authentication_required": (
        "Your bank needs you to confirm this payment. Please pay again and complete the "
        "verification step."
    ),
    "payment_intent_authentication_failure": (
        "The payment was not confirmed with your bank. Please try again and complete the "
        "verification step, or use a different payment method."
    ),
    "payment_method_not_available": (
        f"This payment method is not available right now. {_TRY_ANOTHER}"
    ),
}
_DEFAULT = f"The payment could not be completed. {_TRY_ANOTHER}"


def customer_message(code: str | None) -> str:
    return _MESSAGES.get(code or "", _DEFAULT)

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from shared.settings import ServiceSettings

__all__ = ["DEV_SIMULATED_WEBHOOK_SECRET", "STRIPE_API_VERSION", "PaymentSettings", "ProviderName"]

# The API version this integration is written and tested against: requests pin it, and the
# webhook endpoint must be created with it too, so that payloads have the shapes parsed
# in shared.payments._provider. (The SDK's own default is newer and renames
# ``payment_method_types``.)
STRIPE_API_VERSION = "2025-03-31.basil"

ProviderName = Literal["simulated", "stripe", "disabled"]
DEV_SIMULATED_WEBHOOK_SECRET = "whsec_dev_only_simulated"  # noqa: S105 - embedded mode only


class PaymentSettings(ServiceSettings):
    """Settings of a service that takes payments (orders, crowdfund).

    ``PAYMENT_PROVIDER`` defaults to ``simulated`` in the embedded mode and to ``disabled``
    otherwise: a production process never takes fake payments because a variable was
    forgotten. A disabled process starts, and its payment endpoints answer 503.
    """

    payment_provider_setting: ProviderName | None = Field(None, alias="PAYMENT_PROVIDER")
    stripe_api_key: str = Field("", alias="STRIPE_API_KEY")
    stripe_webhook_secret: str = Field("", alias="STRIPE_WEBHOOK_SECRET")
    # Only for tests and local fakes (localstripe); the SDK's default is api.stripe.com.
    stripe_api_base: str | None = Field(None, alias="STRIPE_API_BASE")
    stripe_api_version: str = Field(STRIPE_API_VERSION, alias="STRIPE_API_VERSION")
    stripe_max_network_retries: int = Field(2, alias="STRIPE_MAX_NETWORK_RETRIES", ge=0)
    stripe_timeout_seconds: float = Field(30.0, alias="STRIPE_TIMEOUT_SECONDS", gt=0)
    # Largest amount of one payment, in minor units of its currency.
    payment_max_amount: int = Field(10_000_000, alias="PAYMENT_MAX_AMOUNT", gt=0)
    simulated_webhook_secret: str = Field("", alias="SIMULATED_WEBHOOK_SECRET")
    # How long the simulated provider's "later" outcomes take (processing, disputes).
    simulated_settle_seconds: float = Field(3.0, alias="SIMULATED_SETTLE_SECONDS", ge=0)

    @property
    def payment_provider(self) -> ProviderName:
        if self.payment_provider_setting is not None:
            return self.payment_provider_setting
        return "simulated" if self.mode == "embedded" else "disabled"

    @property
    def payment_webhook_secret(self) -> str:
        if self.payment_provider == "stripe":
            return self.stripe_webhook_secret
        if self.payment_provider == "simulated":
            return self.simulated_webhook_secret
        return ""

    @model_validator(mode="after")
    def _payment_secrets(self) -> PaymentSettings:
        provider = self.payment_provider
        if provider == "simulated" and not self.simulated_webhook_secret:
            if self.mode != "embedded":
                raise ValueError(
                    "SIMULATED_WEBHOOK_SECRET must be set to use PAYMENT_PROVIDER=simulated "
                    "outside the embedded mode"
                )
            object.__setattr__(self, "simulated_webhook_secret", DEV_SIMULATED_WEBHOOK_SECRET)
        if provider == "stripe" and not self.stripe_api_key:
            raise ValueError("STRIPE_API_KEY must be set when PAYMENT_PROVIDER=stripe")
        return self

"""Payouts (Connect transfers) in the payment layer: both providers, and ``pay_out``'s answers.

The Stripe provider runs through the real ``stripe`` SDK over HTTP against localstripe with
Connect's transfer routes added (``qunbuy.localstripe_connect``). That part is a stand-in of
ours: localstripe has no ``/v1/transfers`` or ``/v1/accounts`` and no local Stripe Connect
exists. It honours idempotency keys as Stripe does, so "paid once" is counted there.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import stripe

from qunbuy.pg import database_url, drop_databases, ensure_databases
from services.referrals.models import payments, platform
from shared.db import make_engine, sessionmaker_for
from shared.events import EventPublisher
from shared.migrations import upgrade
from shared.payments import (
    FAILING_PAYOUT_ACCOUNT,
    FAILING_PAYOUT_CODE,
    REVERSING_PAYOUT_ACCOUNT,
    PaymentAmountInvalid,
    PaymentContext,
    PaymentProvider,
    PaymentProviderUnavailable,
    PayoutAccountInvalid,
    ProviderRejected,
    ProviderTransfer,
    ProviderUnavailable,
    SimulatedProvider,
    TransferRequest,
    check_payout_account,
    pay_out,
)
from shared.payments._stripe import StripeProvider
from tests.shared.payments.support import (
    SIMULATED_WEBHOOK_SECRET,
    STRIPE_TEST_KEY,
    STRIPE_WEBHOOK_SECRET,
)


@pytest.fixture
async def stripe_provider(localstripe_url: str) -> AsyncIterator[StripeProvider]:
    provider = StripeProvider(
        api_key=STRIPE_TEST_KEY,
        webhook_secret=STRIPE_WEBHOOK_SECRET,
        api_base=localstripe_url,
        max_network_retries=0,
    )
    yield provider
    await provider.aclose()


@pytest.fixture(scope="module")
def own_db(pg_server_url: str) -> Iterator[str]:
    name = f"qbt_payout_{uuid.uuid4().hex[:10]}"
    asyncio.run(ensure_databases(pg_server_url, [name], fresh=True))
    url = database_url(pg_server_url, name)
    try:
        upgrade("referrals", url)
        yield url
    finally:
        asyncio.run(drop_databases(pg_server_url, [name]))


@pytest.fixture
async def simulated(own_db: str) -> AsyncIterator[SimulatedProvider]:
    engine = make_engine(own_db, pool_size=4)
    try:
        yield SimulatedProvider(
            sessionmaker=sessionmaker_for(engine),
            tables=payments,
            webhook_secret=SIMULATED_WEBHOOK_SECRET,
            settle_seconds=0,
        )
    finally:
        await engine.dispose()


def transfer_request(
    destination: str = "acct_1PayeeAccount01", *, amount: int = 1234, reference: str = ""
) -> TransferRequest:
    return TransferRequest(
        amount=amount,
        currency="CNY",
        destination=destination,
        reference=reference or f"withdrawal:{uuid.uuid4()}:payout",
        metadata={"merchant_id": "m_test"},
    )


def key() -> str:
    return f"test:{uuid.uuid4().hex}"


async def transfers_in_group(sdk: stripe.StripeClient, group: str) -> list[dict[str, Any]]:
    listed = await sdk.v1.transfers.list_async({"transfer_group": group, "limit": 100})
    return [t.to_dict() for t in listed.data]


class TestStripeTransfers:
    async def test_a_transfer_is_made_once_per_idempotency_key(
        self, stripe_provider: StripeProvider, localstripe_sdk: stripe.StripeClient
    ) -> None:
        request = transfer_request()
        same_key = key()
        first = await stripe_provider.create_transfer(request, idempotency_key=same_key)
        again = await stripe_provider.create_transfer(request, idempotency_key=same_key)
        assert first.id.startswith("tr_")
        assert again.id == first.id
        assert (first.amount, first.currency, first.destination) == (
            1234,
            "CNY",
            "acct_1PayeeAccount01",
        )
        assert first.reference == request.reference
        assert not first.reversed
        made = await transfers_in_group(localstripe_sdk, request.reference)
        assert [t["id"] for t in made] == [first.id]
        assert made[0]["metadata"]["reference"] == request.reference
        assert (await stripe_provider.retrieve_transfer(first.id)).id == first.id

    async def test_the_same_key_with_other_parameters_is_refused(
        self, stripe_provider: StripeProvider
    ) -> None:
        request, same_key = transfer_request(), key()
        await stripe_provider.create_transfer(request, idempotency_key=same_key)
        other = transfer_request(amount=999, reference=request.reference)
        with pytest.raises(ProviderRejected) as refused:
            await stripe_provider.create_transfer(other, idempotency_key=same_key)
        assert refused.value.code == "idempotency_error"

    async def test_a_destination_that_cannot_take_transfers_is_refused(
        self, stripe_provider: StripeProvider, localstripe_sdk: stripe.StripeClient
    ) -> None:
        request = transfer_request(FAILING_PAYOUT_ACCOUNT)
        with pytest.raises(ProviderRejected) as refused:
            await stripe_provider.create_transfer(request, idempotency_key=key())
        assert refused.value.code == FAILING_PAYOUT_CODE
        assert await transfers_in_group(localstripe_sdk, request.reference) == []

    async def test_a_reversal_shows_on_the_transfer(
        self, stripe_provider: StripeProvider, localstripe_sdk: stripe.StripeClient
    ) -> None:
        made = await stripe_provider.create_transfer(transfer_request(), idempotency_key=key())
        await localstripe_sdk.v1.transfers.reversals.create_async(made.id, {"amount": 234})
        part = await stripe_provider.retrieve_transfer(made.id)
        assert (part.amount_reversed, part.reversed) == (234, True)
        await localstripe_sdk.v1.transfers.reversals.create_async(made.id)
        whole = await stripe_provider.retrieve_transfer(made.id)
        assert whole.amount_reversed == whole.amount == 1234

    async def test_the_reversing_destination_reverses_by_itself(
        self, stripe_provider: StripeProvider
    ) -> None:
        made = await stripe_provider.create_transfer(
            transfer_request(REVERSING_PAYOUT_ACCOUNT), idempotency_key=key()
        )
        assert not made.reversed
        for _ in range(100):
            current = await stripe_provider.retrieve_transfer(made.id)
            if current.reversed:
                break
            await asyncio.sleep(0.05)
        assert current.amount_reversed == current.amount


class TestSimulatedTransfers:
    async def test_replays_by_key_refuses_the_failing_account_and_reverses_the_other(
        self, simulated: SimulatedProvider
    ) -> None:
        request, same_key = transfer_request(), key()
        first, second = await asyncio.gather(
            simulated.create_transfer(request, idempotency_key=same_key),
            simulated.create_transfer(request, idempotency_key=same_key),
        )
        assert first.id == second.id
        assert first.id.startswith("tr_sim_")
        assert (await simulated.retrieve_transfer(first.id)).reference == request.reference
        with pytest.raises(ProviderRejected) as refused:
            await simulated.create_transfer(
                transfer_request(FAILING_PAYOUT_ACCOUNT), idempotency_key=key()
            )
        assert refused.value.code == FAILING_PAYOUT_CODE
        later = await simulated.create_transfer(
            transfer_request(REVERSING_PAYOUT_ACCOUNT), idempotency_key=key()
        )
        assert not later.reversed
        await simulated.settle_due()
        assert (await simulated.retrieve_transfer(later.id)).amount_reversed == later.amount
        (found,) = await simulated.find_transfers(request.reference)
        assert found.id == first.id


@dataclass
class Scripted:
    """A provider whose transfers raise what a test says (the outcomes ``pay_out`` reads)."""

    error: Exception

    async def find_transfers(self, reference: str) -> list[ProviderTransfer]:
        return []  # nothing made before

    async def create_transfer(self, request: TransferRequest, **_: Any) -> ProviderTransfer:
        raise self.error


@dataclass
class MadeBefore:
    """A provider that already holds this reference's transfer (an earlier run's), reversed
    by ``amount_reversed``; it must not be asked for another."""

    amount_reversed: int

    async def find_transfers(self, reference: str) -> list[ProviderTransfer]:
        return [
            ProviderTransfer(
                id="tr_made_before",
                amount=500,
                currency="cny",
                destination="acct_1PayeeAccount01",
                amount_reversed=self.amount_reversed,
                reference=reference,
                metadata={"qunbuy_attempt": "1"},
            )
        ]

    async def create_transfer(self, request: TransferRequest, **_: Any) -> ProviderTransfer:
        raise AssertionError("a transfer made before is never made again")


def context(provider: Any) -> PaymentContext:
    return PaymentContext(
        service="referrals",
        tables=payments,
        provider=provider,
        publisher=EventPublisher(source="referrals", tables=platform, subscribers=[]),
        max_amount=100,
        sessionmaker=None,  # type: ignore[arg-type]  # pay_out opens no transaction
        autocommit=None,  # type: ignore[arg-type]  # nor runs a statement of its own
    )


class TestPayOut:
    async def test_paid_is_the_transfer_and_no_payment_maximum_applies(
        self, stripe_provider: StripeProvider
    ) -> None:
        result = await pay_out(
            context(stripe_provider),
            reference=f"settlement:{uuid.uuid4()}:payout",
            destination="acct_1PayeeAccount01",
            amount=50_000_000,  # far above max_amount: a settlement may be large
            currency="cny",
        )
        assert result.status == "paid"
        assert result.transfer is not None
        assert result.transfer.amount == 50_000_000

    async def test_run_twice_at_once_pays_once(
        self, stripe_provider: StripeProvider, localstripe_sdk: stripe.StripeClient
    ) -> None:
        reference = f"withdrawal:{uuid.uuid4()}:payout"
        ctx = context(stripe_provider)
        results = await asyncio.gather(
            *(
                pay_out(
                    ctx,
                    reference=reference,
                    destination="acct_1PayeeAccount01",
                    amount=500,
                    currency="CNY",
                )
                for _ in range(3)
            )
        )
        made = {r.transfer.id for r in results if r.transfer is not None}
        assert len(made) == 1
        assert all(r.status == "paid" for r in results)
        assert len(await transfers_in_group(localstripe_sdk, reference)) == 1
        # Another attempt is another transfer (its own key): the domain decides to make one.
        again = await pay_out(
            ctx,
            reference=reference,
            destination="acct_1PayeeAccount01",
            amount=500,
            currency="CNY",
            attempt=2,
        )
        assert again.transfer is not None
        assert again.transfer.id not in made
        assert len(await transfers_in_group(localstripe_sdk, reference)) == 2

    async def test_a_resumed_payout_finds_a_transfer_whose_key_the_provider_forgot(
        self, stripe_provider: StripeProvider, localstripe_sdk: stripe.StripeClient
    ) -> None:
        # A transfer made by the first run, more than 24 hours ago: Stripe no longer knows
        # the key it was made with (here: it was made with another one).
        reference = f"withdrawal:{uuid.uuid4()}:payout"
        earlier = TransferRequest(
            amount=500,
            currency="CNY",
            destination="acct_1PayeeAccount01",
            reference=reference,
            metadata={"qunbuy_service": "referrals", "qunbuy_attempt": "1"},
        )
        first = await stripe_provider.create_transfer(earlier, idempotency_key=key())
        ctx = context(stripe_provider)
        args: dict[str, Any] = {
            "reference": reference,
            "destination": "acct_1PayeeAccount01",
            "amount": 500,
            "currency": "CNY",
        }
        # Every run looks first: also a job re-driven from the dead letters, whose attempt
        # count starts again, finds the transfer its forgotten key made.
        for _ in range(2):
            resumed = await pay_out(ctx, **args)
            assert resumed.transfer is not None
            assert (resumed.status, resumed.transfer.id) == ("paid", first.id)
        assert len(await transfers_in_group(localstripe_sdk, reference)) == 1

    async def test_a_refusal_is_a_failed_result(self, stripe_provider: StripeProvider) -> None:
        result = await pay_out(
            context(stripe_provider),
            reference=f"withdrawal:{uuid.uuid4()}:payout",
            destination=FAILING_PAYOUT_ACCOUNT,
            amount=500,
            currency="CNY",
        )
        assert (result.status, result.transfer, result.failure_code) == (
            "failed",
            None,
            FAILING_PAYOUT_CODE,
        )

    @pytest.mark.parametrize(
        "error",
        [
            ProviderUnavailable("timed out"),
            ProviderRejected("in use", code="idempotency_key_in_use"),
            ProviderRejected("other parameters", code="idempotency_error"),
        ],
    )
    async def test_an_answer_that_does_not_say_no_is_retried_not_failed(
        self, error: Exception
    ) -> None:
        provider: PaymentProvider = Scripted(error)  # type: ignore[assignment]
        with pytest.raises(PaymentProviderUnavailable):
            await pay_out(
                context(provider),
                reference="withdrawal:x:payout",
                destination="acct_1PayeeAccount01",
                amount=500,
                currency="CNY",
            )

    @pytest.mark.parametrize(
        ("amount_reversed", "status"), [(0, "paid"), (200, "paid"), (500, "failed")]
    )
    async def test_a_transfer_found_is_failed_only_when_reversed_in_full(
        self, amount_reversed: int, status: str
    ) -> None:
        """Reversed in part, the payee kept some of it: paid (as the payout hooks treat it),
        never the whole amount given back for a second payout."""
        provider: PaymentProvider = MadeBefore(amount_reversed)  # type: ignore[assignment]
        result = await pay_out(
            context(provider),
            reference="withdrawal:x:payout",
            destination="acct_1PayeeAccount01",
            amount=500,
            currency="CNY",
        )
        assert result.status == status
        assert result.transfer is not None
        assert result.transfer.id == "tr_made_before"

    @pytest.mark.parametrize(
        ("destination", "amount", "error"),
        [
            ("acct_", 500, PayoutAccountInvalid),
            ("ba_1PayeeAccount01", 500, PayoutAccountInvalid),
            ("acct_1Payee Account", 500, PayoutAccountInvalid),
            ("acct_1PayeeAccount01\x00", 500, PayoutAccountInvalid),
            ("acct_1PayeeAccount01", 0, PaymentAmountInvalid),
            ("acct_1PayeeAccount01", -5, PaymentAmountInvalid),
        ],
    )
    async def test_bad_input_is_refused_before_the_provider(
        self, destination: str, amount: int, error: type[Exception]
    ) -> None:
        called = AssertionError("the provider was called")
        provider: PaymentProvider = Scripted(called)  # type: ignore[assignment]
        with pytest.raises(error):
            await pay_out(
                context(provider),
                reference="withdrawal:x:payout",
                destination=destination,
                amount=amount,
                currency="CNY",
            )


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("acct_1032D82eZvKYlo2C", True),
        ("acct_123456", True),
        ("acct_12345", False),
        ("acct_" + "a" * 65, False),
        ("ACCT_1032D82eZvKYlo2C", False),
        ("acct_1032D82e-ZvKYlo2C", False),
        (" acct_1032D82eZvKYlo2C", False),
        ("acct_1032D82eZvKYlo2C\n", False),
    ],
)
def test_payout_account_shape(value: str, valid: bool) -> None:
    if valid:
        assert check_payout_account(value) == value
    else:
        with pytest.raises(PayoutAccountInvalid):
            check_payout_account(value)

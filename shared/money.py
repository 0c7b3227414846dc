"""Money as integer minor units plus an ISO 4217 currency code.

Floats are refused everywhere: a float cannot hold 0.1 yuan exactly, and a ledger that
is off by one fen does not reconcile. Rates are integer basis points (1 bp = 0.01%).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

from shared.errors import DomainError

__all__ = ["CURRENCIES", "CurrencyMismatch", "InvalidMoney", "Money", "UnknownCurrency"]

# Currency code -> number of minor-unit digits (ISO 4217). Only the currencies the platform
# settles in; adding one here is a deliberate product decision, not a lookup table dump.
CURRENCIES: dict[str, int] = {
    "CNY": 2,
    "HKD": 2,
    "USD": 2,
    "EUR": 2,
    "GBP": 2,
    "SGD": 2,
    "JPY": 0,
    "KRW": 0,
}


class UnknownCurrency(DomainError):
    status = 422
    code = "unknown_currency"
    title = "Unknown currency"


class CurrencyMismatch(DomainError):
    status = 422
    code = "currency_mismatch"
    title = "Currencies do not match"


class InvalidMoney(DomainError):
    status = 422
    code = "invalid_money"
    title = "Invalid amount"


def normalize_currency(code: str) -> str:
    upper = code.upper()
    if upper not in CURRENCIES:
        raise UnknownCurrency(f"{code!r} is not a currency this platform accepts")
    return upper


@dataclass(frozen=True, slots=True)
class Money:
    amount: int
    currency: str

    def __post_init__(self) -> None:
        # bool is an int subclass; True yuan is not an amount.
        if not isinstance(self.amount, int) or isinstance(self.amount, bool):
            raise InvalidMoney(f"amount must be an integer of minor units, got {self.amount!r}")
        object.__setattr__(self, "currency", normalize_currency(self.currency))

    @classmethod
    def zero(cls, currency: str) -> Money:
        return cls(0, currency)

    def _same(self, other: Money) -> None:
        if not isinstance(other, Money):
            raise TypeError(f"cannot combine Money with {type(other).__name__}")
        if other.currency != self.currency:
            raise CurrencyMismatch(f"cannot combine {self.currency} with {other.currency}")

    def __add__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.amount + other.amount, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.amount - other.amount, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.amount, self.currency)

    def __mul__(self, factor: int) -> Money:
        if not isinstance(factor, int) or isinstance(factor, bool):
            raise InvalidMoney("money can only be multiplied by an integer quantity")
        return Money(self.amount * factor, self.currency)

    __rmul__ = __mul__

    def __lt__(self, other: Money) -> bool:
        self._same(other)
        return self.amount < other.amount

    def __le__(self, other: Money) -> bool:
        self._same(other)
        return self.amount <= other.amount

    def __gt__(self, other: Money) -> bool:
        self._same(other)
        return self.amount > other.amount

    def __ge__(self, other: Money) -> bool:
        self._same(other)
        return self.amount >= other.amount

    def apply_rate_bps(self, bps: int) -> Money:
        """This amount times ``bps / 10000``, rounded half away from zero to the minor unit.

        Rounding rule: commissions and deposits are computed per line with this rule, and
        any remainder stays with the larger share, so parts always add up to the whole.
        """
        if not isinstance(bps, int) or isinstance(bps, bool):
            raise InvalidMoney("rates are integer basis points")
        numerator = self.amount * bps
        quotient, remainder = divmod(abs(numerator), 10_000)
        if remainder * 2 >= 10_000:
            quotient += 1
        return Money(quotient if numerator >= 0 else -quotient, self.currency)

    def allocate(self, weights: list[int]) -> list[Money]:
        """Split into parts proportional to ``weights`` that add up exactly to this amount.

        Largest-remainder method: each part is floored, then the leftover minor units go one
        each to the parts with the largest remainders (earlier parts win ties). A negative
        amount is split as the negation of the positive split.
        """
        if not weights or any(w < 0 for w in weights) or sum(weights) == 0:
            raise InvalidMoney("weights must be non-negative and not all zero")
        if self.amount < 0:
            # Mirror image of the positive split, so a refund reverses each part exactly.
            return [-part for part in (-self).allocate(weights)]
        total = sum(weights)
        raw = [divmod(self.amount * w, total) for w in weights]
        parts = [q for q, _ in raw]
        leftover = self.amount - sum(parts)
        order = sorted(range(len(weights)), key=lambda i: (-raw[i][1], i))
        for i in order[:leftover]:
            parts[i] += 1
        return [Money(p, self.currency) for p in parts]

    def __str__(self) -> str:
        digits = CURRENCIES[self.currency]
        if digits == 0:
            return f"{self.amount} {self.currency}"
        sign = "-" if self.amount < 0 else ""
        major, minor = divmod(abs(self.amount), 10**digits)
        return f"{sign}{major}.{minor:0{digits}d} {self.currency}"

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: type[Any], handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        fields = core_schema.typed_dict_schema(
            {
                "amount": core_schema.typed_dict_field(core_schema.int_schema(strict=True)),
                "currency": core_schema.typed_dict_field(
                    core_schema.str_schema(min_length=3, max_length=3)
                ),
            }
        )

        def build(value: dict[str, Any]) -> Money:
            return cls(value["amount"], value["currency"])

        def unpack(value: Any) -> Any:
            # A Money instance (a model built in code) is validated like its JSON form.
            if isinstance(value, Money):
                return {"amount": value.amount, "currency": value.currency}
            return value

        return core_schema.no_info_before_validator_function(
            unpack,
            core_schema.no_info_after_validator_function(build, fields),
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda m: {"amount": m.amount, "currency": m.currency}
            ),
        )

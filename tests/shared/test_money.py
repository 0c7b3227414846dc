"""Money: integer minor units, a known currency, exact rounding and exact splits."""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from shared.errors import DomainError
from shared.money import CurrencyMismatch, InvalidMoney, Money, UnknownCurrency

AMOUNTS = st.integers(min_value=-(10**12), max_value=10**12)
CURRENCY_CODES = st.sampled_from(["CNY", "HKD", "USD", "EUR", "GBP", "SGD", "JPY", "KRW"])


class Line(BaseModel):
    sku: str
    price: Money


# --- construction ------------------------------------------------------------------------


@pytest.mark.parametrize("amount", [1.5, 100.0, 0.0, float("nan")])
def test_floats_are_refused(amount: float) -> None:
    with pytest.raises(InvalidMoney) as info:
        Money(amount, "CNY")  # type: ignore[arg-type]
    assert info.value.code == "invalid_money"
    assert info.value.status == 422


@pytest.mark.parametrize("amount", [True, False])
def test_bools_are_refused(amount: bool) -> None:
    with pytest.raises(InvalidMoney):
        Money(amount, "CNY")


@pytest.mark.parametrize("amount", ["100", None, Fraction(1, 2)])
def test_other_non_integers_are_refused(amount: object) -> None:
    with pytest.raises(InvalidMoney):
        Money(amount, "CNY")  # type: ignore[arg-type]


@pytest.mark.parametrize("code", ["XYZ", "RMB", "", "CNYX", "usdollar", "BTC"])
def test_unknown_currencies_are_refused(code: str) -> None:
    with pytest.raises(UnknownCurrency) as info:
        Money(100, code)
    assert isinstance(info.value, DomainError)
    assert info.value.code == "unknown_currency"
    assert info.value.status == 422


def test_currency_code_is_normalised_to_upper_case() -> None:
    money = Money(100, "cny")
    assert money.currency == "CNY"
    assert money == Money(100, "CNY")


def test_money_is_immutable_and_hashable() -> None:
    money = Money(100, "CNY")
    with pytest.raises(AttributeError):
        money.amount = 5  # type: ignore[misc]
    assert {Money(1, "CNY"), Money(1, "CNY"), Money(1, "USD")} == {
        Money(1, "CNY"),
        Money(1, "USD"),
    }
    assert Money.zero("jpy") == Money(0, "JPY")


# --- arithmetic --------------------------------------------------------------------------


def test_arithmetic_in_one_currency() -> None:
    a, b = Money(1050, "CNY"), Money(-75, "CNY")
    assert a + b == Money(975, "CNY")
    assert a - b == Money(1125, "CNY")
    assert -a == Money(-1050, "CNY")
    assert a * 3 == Money(3150, "CNY")
    assert 3 * a == Money(3150, "CNY")
    assert a > b
    assert b < a
    assert a >= Money(1050, "CNY")
    assert a <= Money(1050, "CNY")


BINARY_OPS: dict[str, Callable[[Money, Money], Any]] = {
    "+": lambda x, y: x + y,
    "-": lambda x, y: x - y,
    "<": lambda x, y: x < y,
    "<=": lambda x, y: x <= y,
    ">": lambda x, y: x > y,
    ">=": lambda x, y: x >= y,
}


@pytest.mark.parametrize("op", sorted(BINARY_OPS))
def test_mixed_currencies_are_refused(op: str) -> None:
    with pytest.raises(CurrencyMismatch) as info:
        BINARY_OPS[op](Money(100, "CNY"), Money(100, "USD"))
    assert info.value.code == "currency_mismatch"


def test_equal_amounts_in_different_currencies_are_not_equal() -> None:
    assert Money(100, "CNY") != Money(100, "HKD")


@pytest.mark.parametrize("other", [100, 1.0, None])
def test_money_does_not_combine_with_bare_numbers(other: object) -> None:
    with pytest.raises(TypeError):
        _ = Money(100, "CNY") + other  # type: ignore[operator]
    with pytest.raises(TypeError):
        _ = Money(100, "CNY") < other  # type: ignore[operator]


@pytest.mark.parametrize("factor", [1.5, 2.0, True])
def test_multiplying_by_a_non_integer_is_refused(factor: object) -> None:
    with pytest.raises(InvalidMoney):
        _ = Money(100, "CNY") * factor  # type: ignore[operator]


# --- rates -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "bps", "expected"),
    [
        (10_000, 250, 250),  # 2.5% of 100.00
        (1, 5_000, 1),  # 0.5 -> 1 (half away from zero)
        (-1, 5_000, -1),  # -0.5 -> -1
        (3, 5_000, 2),  # 1.5 -> 2
        (-3, 5_000, -2),  # -1.5 -> -2
        (5, 5_000, 3),  # 2.5 -> 3, not banker's 2
        (-5, 5_000, -3),
        (3, -5_000, -2),  # a negative rate rounds the same way
        (4_999, 1, 0),  # 0.4999 -> 0
        (5_000, 1, 1),  # 0.5 -> 1
        (-4_999, 1, 0),
        (-5_000, 1, -1),
        (15_001, 1, 2),  # 1.5001 -> 2
        (14_999, 1, 1),  # 1.4999 -> 1
        (12_345, 0, 0),
        (12_345, 10_000, 12_345),
        (999, 333, 33),  # 33.2667 -> 33
        (999, 334, 33),  # 33.3666 -> 33
        (1_500, 333, 50),  # 49.95 -> 50
    ],
)
def test_apply_rate_bps_rounds_half_away_from_zero(amount: int, bps: int, expected: int) -> None:
    assert Money(amount, "CNY").apply_rate_bps(bps) == Money(expected, "CNY")


def _round_half_away(value: Fraction) -> int:
    magnitude = math.floor(abs(value) + Fraction(1, 2))
    return magnitude if value >= 0 else -magnitude


@given(amount=AMOUNTS, bps=st.integers(min_value=-20_000, max_value=20_000), code=CURRENCY_CODES)
def test_apply_rate_bps_matches_exact_arithmetic(amount: int, bps: int, code: str) -> None:
    result = Money(amount, code).apply_rate_bps(bps)
    assert result.currency == code
    assert result.amount == _round_half_away(Fraction(amount * bps, 10_000))
    # Rounding is symmetric: the rate of a refund is the negated rate of the payment.
    assert Money(-amount, code).apply_rate_bps(bps) == -result


@pytest.mark.parametrize("bps", [2.5, 250.0, True])
def test_apply_rate_bps_refuses_non_integer_rates(bps: object) -> None:
    with pytest.raises(InvalidMoney):
        Money(100, "CNY").apply_rate_bps(bps)  # type: ignore[arg-type]


# --- allocation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "weights", "expected"),
    [
        (100, [1, 1, 1], [34, 33, 33]),
        (101, [1, 1, 1], [34, 34, 33]),
        (2, [1, 1, 1], [1, 1, 0]),
        (100, [0, 1, 1], [0, 50, 50]),
        (101, [0, 1, 1], [0, 51, 50]),
        (1, [1, 1], [1, 0]),  # earlier part wins the tie
        (1000, [70, 20, 10], [700, 200, 100]),
        (5, [3, 7], [2, 3]),  # 1.5 and 3.5: equal remainders, earlier part wins
        (10, [1, 2, 3, 4], [1, 2, 3, 4]),
        (7, [1, 2, 3, 4], [1, 1, 2, 3]),  # 0.7, 1.4, 2.1, 2.8
        (0, [1, 2], [0, 0]),
        (-100, [1, 1, 1], [-34, -33, -33]),  # mirror image of 100
        (-1, [1, 1], [-1, 0]),
    ],
)
def test_allocate_awkward_splits(amount: int, weights: list[int], expected: list[int]) -> None:
    parts = Money(amount, "CNY").allocate(weights)
    assert parts == [Money(p, "CNY") for p in expected]
    assert sum(p.amount for p in parts) == amount


@given(
    amount=AMOUNTS,
    weights=st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=30).filter(
        lambda ws: sum(ws) > 0
    ),
    code=CURRENCY_CODES,
)
def test_allocate_adds_up_exactly(amount: int, weights: list[int], code: str) -> None:
    whole = Money(amount, code)
    parts = whole.allocate(weights)
    assert len(parts) == len(weights)
    assert all(p.currency == code for p in parts)
    total = Money.zero(code)
    for part in parts:
        total = total + part
    assert total == whole
    for part, weight in zip(parts, weights, strict=True):
        exact = Fraction(amount * weight, sum(weights))
        # Each part is its exact share rounded down or up, never further off.
        assert math.floor(exact) <= part.amount <= math.ceil(exact)
        if weight == 0:
            assert part.amount == 0
    # A refund of the whole splits into exactly the negated parts.
    assert (-whole).allocate(weights) == [-p for p in parts]


@pytest.mark.parametrize("weights", [[], [0, 0], [1, -1], [-1]])
def test_allocate_refuses_bad_weights(weights: list[int]) -> None:
    with pytest.raises(InvalidMoney):
        Money(100, "CNY").allocate(weights)


# --- formatting --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("money", "text"),
    [
        (Money(12345, "CNY"), "123.45 CNY"),
        (Money(5, "CNY"), "0.05 CNY"),
        (Money(50, "CNY"), "0.50 CNY"),
        (Money(0, "CNY"), "0.00 CNY"),
        (Money(-5, "CNY"), "-0.05 CNY"),
        (Money(-12345, "CNY"), "-123.45 CNY"),
        (Money(100, "usd"), "1.00 USD"),
        (Money(1500, "JPY"), "1500 JPY"),
        (Money(0, "JPY"), "0 JPY"),
        (Money(-1500, "JPY"), "-1500 JPY"),
        (Money(7, "KRW"), "7 KRW"),
    ],
)
def test_str(money: Money, text: str) -> None:
    assert str(money) == text


# --- pydantic ----------------------------------------------------------------------------


def test_pydantic_accepts_integer_minor_units_and_serialises_back() -> None:
    line = Line.model_validate({"sku": "tea", "price": {"amount": 1999, "currency": "cny"}})
    assert line.price == Money(1999, "CNY")
    assert isinstance(line.price, Money)
    assert line.model_dump() == {"sku": "tea", "price": {"amount": 1999, "currency": "CNY"}}
    assert line.model_dump(mode="json") == {
        "sku": "tea",
        "price": {"amount": 1999, "currency": "CNY"},
    }
    assert line.model_dump_json() == '{"sku":"tea","price":{"amount":1999,"currency":"CNY"}}'
    assert Line.model_validate_json(line.model_dump_json()) == line


def test_pydantic_accepts_a_money_instance() -> None:
    """Response models are built in code from domain objects that already hold Money."""
    line = Line(sku="tea", price=Money(1999, "JPY"))
    assert line.price == Money(1999, "JPY")
    assert line.model_dump()["price"] == {"amount": 1999, "currency": "JPY"}


@pytest.mark.parametrize("amount", [1.5, "100", 100.0, True, None, "1e2"], ids=repr)
def test_pydantic_refuses_non_integer_amounts(amount: object) -> None:
    with pytest.raises(ValidationError) as info:
        Line.model_validate({"sku": "tea", "price": {"amount": amount, "currency": "CNY"}})
    assert [e["loc"] for e in info.value.errors()] == [("price", "amount")]


@pytest.mark.parametrize(
    "body",
    [
        '{"sku": "tea", "price": {"amount": 1.5, "currency": "CNY"}}',
        '{"sku": "tea", "price": {"amount": 100.0, "currency": "CNY"}}',
        '{"sku": "tea", "price": {"amount": "100", "currency": "CNY"}}',
    ],
)
def test_pydantic_refuses_non_integer_amounts_in_json(body: str) -> None:
    with pytest.raises(ValidationError) as info:
        Line.model_validate_json(body)
    assert [e["loc"] for e in info.value.errors()] == [("price", "amount")]


def test_pydantic_refuses_a_missing_currency() -> None:
    with pytest.raises(ValidationError) as info:
        Line.model_validate({"sku": "tea", "price": {"amount": 100}})
    assert [e["loc"] for e in info.value.errors()] == [("price", "currency")]


def test_pydantic_refuses_an_unknown_currency_with_its_code() -> None:
    with pytest.raises(UnknownCurrency):
        Line.model_validate({"sku": "tea", "price": {"amount": 100, "currency": "XYZ"}})


def test_json_schema_describes_amount_and_currency() -> None:
    for mode in ("validation", "serialization"):
        schema = Line.model_json_schema(mode=mode)
        price = schema["properties"]["price"]
        assert price["type"] == "object"
        assert price["properties"]["amount"]["type"] == "integer"
        assert price["properties"]["currency"]["type"] == "string"
        assert sorted(price["required"]) == ["amount", "currency"]

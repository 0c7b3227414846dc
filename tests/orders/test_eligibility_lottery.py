"""The lottery and the purchase codes' text, alone (pure functions, no database)."""

from __future__ import annotations

import hashlib
import hmac
import random
import uuid

from hypothesis import given
from hypothesis import strategies as st

from services.orders.eligibility import lottery
from services.orders.eligibility.service import code_hash, new_code

seeds = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
entry_sets = st.lists(st.uuids(), max_size=60, unique=True)


@given(seeds, entry_sets, st.randoms(use_true_random=False))
def test_a_draw_depends_on_the_seed_and_the_set_of_entries_only(
    seed: str, entries: list[uuid.UUID], shuffler: random.Random
) -> None:
    shuffled = list(entries)
    shuffler.shuffle(shuffled)
    assert lottery.draw(seed, entries) == lottery.draw(seed, shuffled)
    assert lottery.digest(entries) == lottery.digest(shuffled)


@given(seeds, entry_sets)
def test_every_entry_gets_its_hmac_ticket_and_better_tickets_rank_first(
    seed: str, entries: list[uuid.UUID]
) -> None:
    drawn = lottery.draw(seed, entries)
    assert sorted(t.entry for t in drawn) == sorted(entries)
    assert [t.rank for t in drawn] == list(range(1, len(entries) + 1))
    for t in drawn:
        expected = hmac.new(seed.encode(), str(t.entry).encode(), hashlib.sha256).hexdigest()
        assert t.ticket == expected
    assert [t.ticket for t in drawn] == sorted(t.ticket for t in drawn)


def test_the_same_seed_draws_the_same_winners_and_another_seed_others() -> None:
    entries = [uuid.uuid4() for _ in range(200)]
    seed = lottery.new_seed()
    first = [t.entry for t in lottery.draw(seed, entries)][:10]
    assert first == [t.entry for t in lottery.draw(seed, list(reversed(entries)))][:10]
    assert first != [t.entry for t in lottery.draw(lottery.new_seed(), entries)][:10]
    assert lottery.commitment(seed) == hashlib.sha256(seed.encode()).hexdigest()
    assert len(seed) == 64


def test_codes_are_random_base32_and_forgive_case_dashes_and_look_alikes() -> None:
    codes = {new_code() for _ in range(1000)}
    assert len(codes) == 1000
    code = codes.pop()
    assert len(code) == 19
    assert code.count("-") == 3
    assert set(code.replace("-", "")) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
    hashed = code_hash(code)
    assert hashed == hashlib.sha256(code.replace("-", "").encode()).hexdigest()
    assert code_hash(code.lower().replace("-", " ")) == hashed
    typed = code.replace("O", "0").replace("I", "1").replace("B", "8")
    assert code_hash(typed) == hashed
    for bad in ("", "ABCD", code + "A", "ÄBCD-EFGH-IJKL-MNOP", "ABCD-EFGH-IJKL-MNO9"):
        assert code_hash(bad) is None

"""The reservation lottery: a pure function of a published seed and the entries, so that
anyone can draw it again and check the winners.

- Before reservations open, the seed is generated (:func:`new_seed`) and only its
  commitment, ``sha256(seed)`` in hex, is published: the seed cannot be changed once the
  entries are known.
- At the draw the seed is revealed. Each entry (a reservation id, its canonical lowercase
  hyphenated text) gets the ticket ``HMAC-SHA256(key=seed, message=id)`` in hex, both as
  UTF-8. Entries are ranked by ticket, then by id; the first ``places`` win.
- A ticket depends on the seed and on that entry alone, so the order in which entries were
  made or listed changes nothing, and no entry can move another's ticket.
- ``digest`` (sha256 of the ids sorted, one per line) pins the set of entries drawn.

To check a draw: ``sha256(seed) == commitment``, then recompute every ticket from the seed
and the published ids, sort, and compare with the published ranks.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Ticket", "commitment", "digest", "draw", "new_seed", "ticket"]


@dataclass(frozen=True, slots=True)
class Ticket:
    entry: uuid.UUID
    ticket: str
    rank: int  # 1 = drawn first


def new_seed() -> str:
    """256 random bits in hex: the secret the draw will reveal."""
    return secrets.token_hex(32)


def commitment(seed: str) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()


def ticket(seed: str, entry: uuid.UUID) -> str:
    return hmac.new(seed.encode(), str(entry).encode(), hashlib.sha256).hexdigest()


def digest(entries: Iterable[uuid.UUID]) -> str:
    return hashlib.sha256("\n".join(sorted(str(e) for e in entries)).encode()).hexdigest()


def draw(seed: str, entries: Iterable[uuid.UUID]) -> list[Ticket]:
    """Every entry with its ticket and rank, best first (the first ``places`` win)."""
    tickets = sorted((ticket(seed, e), str(e), e) for e in set(entries))
    return [Ticket(entry=e, ticket=t, rank=i) for i, (t, _, e) in enumerate(tickets, start=1)]

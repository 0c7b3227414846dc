"""A delivery's order and pledge events at once: the set-based path of commissions.

The rules are those of service.py (attribution, two levels, the leader, self-referral,
suspension, rounding, the holding period); this module applies them to many events with a
few statements per delivery instead of some eighteen per event:

1. advisory locks on every source and customer of the delivery, taken in one order, so that
   deliveries sharing one (a replay, the same order's refund in another batch) queue instead
   of deadlocking;
2. the merchants' programs, in one query;
3. the first paid event of an order or pledge, set-based: the codes, the
   customers' bindings, the distributors with their uplines, the leaders and the overrides
   are read in one query each, and the attributions, their commissions and the commissions'
   first ledger entries are written in one statement (``repository.insert_attributed``);
4. later events of attributed sources (a balance paid, a refund, the completion), set-based
   too: the attributions and their commissions are read and locked in one query each, and
   the new totals, amounts, states and ledger entries written in one statement
   (``repository.settle_many``);
5. everything else event by event, in delivery order, by ``service.on_source``: a refund
   that takes from an available balance (it needs the distributor's lock and balance), a
   source or a customer that comes twice in the delivery (its events' order matters), and a
   pickup leader who is not a distributor yet (their first commission enrols them).

What it writes is what ``service.on_source`` would write for the same events, entry for entry
(tests/referrals/test_commission_batches.py delivers the same events both ways).
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from services.referrals.commissions import repository as repo
from services.referrals.commissions import service
from services.referrals.commissions.repository import (
    NewAttribution,
    NewBinding,
    NewCommission,
    NewEntry,
)
from services.referrals.commissions.service import (
    DISTRIBUTOR,
    LEADER,
    RELEASE_JOB,
    Source,
    account,
    expense_account,
    hold_until,
    target_amount,
)
from services.referrals.links import repository as links
from services.referrals.models import platform
from services.referrals.programs import repository as programs
from services.referrals.programs.repository import DistributorRow, ProgramRow
from shared.events import Envelope
from shared.events.contracts import OrderEvent, PledgeEvent
from shared.scheduler import schedule_many

Item = tuple[Source, str]  # a source's event and its id


async def on_events(
    session: AsyncSession, events: Sequence[tuple[OrderEvent | PledgeEvent, Envelope]]
) -> None:
    """The inbox's batch handler of every order and pledge event."""
    await apply(
        session,
        [
            (
                Source.of_order(event)
                if isinstance(event, OrderEvent)
                else Source.of_pledge(event),
                str(envelope.id),
            )
            for event, envelope in events
        ],
    )


async def apply(session: AsyncSession, items: Sequence[Item]) -> None:
    if not items:
        return
    await repo.lock_keys(
        session,
        [f"source:{s.type}:{s.id}" for s, _ in items]
        + [f"customer:{s.merchant_id}:{s.customer_id}" for s, _ in items],
    )
    rules = await programs.programs_of(session, {s.merchant_id for s, _ in items})
    items = [(s, e) for s, e in items if s.merchant_id in rules]  # the others run no program
    sources = Counter((s.type, s.id) for s, _ in items)
    alone = [(s, e) for s, e in items if sources[(s.type, s.id)] == 1]
    known = await repo.attributions_of(session, [(s.type, s.id) for s, _ in alone]) if alone else {}
    # A customer's binding is read and written by the first paid events of their sources:
    # two of them in one delivery go one after the other.
    customers = Counter(
        (s.merchant_id, s.customer_id) for s, _ in items if (s.type, s.id) not in known
    )
    fresh = [
        (s, e)
        for s, e in alone
        if (s.type, s.id) not in known
        and s.paid_total > 0
        and customers[(s.merchant_id, s.customer_id)] == 1
    ]
    # Unpaid events of sources nobody attributed change nothing (an unpaid order cancelled).
    done = {(s.type, s.id) for s, _ in alone if (s.type, s.id) not in known and s.paid_total == 0}
    done |= await _attribute(session, rules, fresh)
    done |= await _settle_known(
        session, [(s, e) for s, e in alone if (s.type, s.id) in known], known
    )
    # The rest event by event, in delivery order: sources and customers that come twice,
    # leaders to enrol, reversals from an available balance, and (defensively: the locks
    # above keep it from happening) a source another delivery attributed meanwhile.
    for source, event_id in items:
        if (source.type, source.id) not in done:
            await service.on_source(session, source, event_id)


async def _attribute(
    session: AsyncSession, rules: dict[str, ProgramRow], items: Sequence[Item]
) -> set[repo.SourceKey]:
    """First paid events of sources attributed by nobody yet, each of another customer;
    returns the sources attributed here. A source whose pickup leader is not a distributor
    yet is left to ``service.on_source``, which enrols them."""
    if not items:
        return set()
    now = service.now_utc()
    wanted_leaders = {
        (s.merchant_id, s.leader_user_id)
        for s, _ in items
        if s.leader_user_id and s.leader_user_id != s.customer_id
    }
    leaders = (
        await programs.distributors_of_users(session, wanted_leaders) if wanted_leaders else {}
    )
    enrolling = {
        (s.type, s.id)
        for s, _ in items
        if s.leader_user_id
        and s.leader_user_id != s.customer_id
        and (s.merchant_id, s.leader_user_id) not in leaders
    }
    items = [(s, e) for s, e in items if (s.type, s.id) not in enrolling]
    if not items:
        return set()
    owners = await _code_owners(session, {s.referral_code for s, _ in items if s.referral_code})
    bound = await repo.live_bindings(
        session, {(s.merchant_id, s.customer_id) for s, _ in items}, now
    )
    chosen: dict[repo.SourceKey, tuple[uuid.UUID | None, uuid.UUID | None]] = {}
    bindings: list[NewBinding] = []
    for s, _ in items:
        program = rules[s.merchant_id]
        owner = owners.get(s.referral_code) if s.referral_code else None
        coded_id, link_id = (
            (owner[0], owner[2])
            if owner is not None and owner[1] == s.merchant_id
            else (None, None)
        )
        bound_id = bound.get((s.merchant_id, s.customer_id))
        if coded_id is None:
            chosen[(s.type, s.id)] = (bound_id, None)
        elif program.attribution == "first_touch" and bound_id is not None:
            chosen[(s.type, s.id)] = (bound_id, link_id if bound_id == coded_id else None)
        else:
            bindings.append(
                NewBinding(
                    s.merchant_id,
                    s.customer_id,
                    coded_id,
                    now,
                    now + timedelta(days=program.binding_days),
                )
            )
            chosen[(s.type, s.id)] = (coded_id, link_id)
    people = await programs.distributors_and_uplines(
        session, {d for d, _ in chosen.values() if d is not None}
    )
    overrides = await programs.overrides_for(
        session, {(s.merchant_id, s.target_type, s.target_id) for s, _ in items}
    )
    attributions: list[NewAttribution] = []
    commissions: list[NewCommission] = []
    entries: list[NewEntry] = []
    for s, event_id in items:
        chosen_id, link_id = chosen[(s.type, s.id)]
        seller = None if chosen_id is None else people.get(chosen_id)
        upline = (
            None if seller is None or seller.upline_id is None else people.get(seller.upline_id)
        )
        self_referral = seller is not None and s.customer_id in (
            seller.user_id,
            upline.user_id if upline else None,
        )
        leader = (
            leaders[(s.merchant_id, s.leader_user_id)]
            if s.leader_user_id and s.leader_user_id != s.customer_id
            else None
        )
        attributions.append(
            NewAttribution(
                source_type=s.type,
                source_id=s.id,
                merchant_id=s.merchant_id,
                customer_id=s.customer_id,
                distributor_id=seller.id if seller else None,
                upline_id=upline.id if upline else None,
                link_id=link_id,
                leader_id=leader.id if leader else None,
                self_referral=self_referral,
                paid_total=s.paid_total,
                refunded_total=s.refunded_total,
                currency=s.currency,
                completed=s.completed,
            )
        )
        program = rules[s.merchant_id]
        found = overrides.get((s.merchant_id, s.target_type, s.target_id))
        level1, level2, leader_rate = (
            (program.level1_bps, program.level2_bps, program.leader_bps)
            if found is None
            else (found.level1_bps, found.level2_bps, found.leader_bps)
        )
        payees: list[tuple[str, int, DistributorRow | None, int]] = (
            []
            if self_referral
            else [(DISTRIBUTOR, 1, seller, level1), (DISTRIBUTOR, 2, upline, level2)]
        )
        payees.append((LEADER, 1, leader, leader_rate))
        for payee, level, who, rate in payees:
            if who is None or who.status != "active" or rate <= 0:
                continue
            commission = NewCommission(
                id=uuid.uuid4(),
                source_type=s.type,
                source_id=s.id,
                merchant_id=s.merchant_id,
                distributor_id=who.id,
                level=level,
                payee=payee,
                rate_bps=rate,
                currency=s.currency,
                amount=target_amount(s.paid_total, s.refunded_total, rate),
                state="available" if s.completed else "pending",
            )
            commissions.append(commission)
            entries.extend(_first_entries(commission, event_id))
    attributed = await _write(session, bindings, attributions, commissions, entries)
    runs = [
        (f"{s.type}:{s.id}", until)
        for s, _ in items
        if (s.type, s.id) in attributed
        and (until := hold_until(rules[s.merchant_id], s.type, now)) is not None
    ]
    await schedule_many(session, platform, kind=RELEASE_JOB, runs=runs)
    return attributed


async def _settle_known(
    session: AsyncSession,
    items: Sequence[Item],
    known: dict[repo.SourceKey, repo.AttributionRow],
) -> set[repo.SourceKey]:
    """Later events of attributed sources, each alone in the delivery: their totals taken
    and every commission brought to its target (accrued, reversed from pending, released at
    completion) in one statement. A source whose reversal would take from an available
    balance is left to ``service.on_source``: that needs the distributor's lock and balance.
    Returns the sources settled here."""
    if not items:
        return set()
    levels = await repo.commissions_of_many(session, [(s.type, s.id) for s, _ in items])
    now = service.now_utc()
    totals: list[repo.AttributionTotals] = []
    changes: list[repo.CommissionChange] = []
    entries: list[NewEntry] = []
    done: set[repo.SourceKey] = set()
    for s, event_id in items:
        key = (s.type, s.id)
        attr = known[key]
        paid = max(attr.paid_total, s.paid_total)
        refunded = max(attr.refunded_total, s.refunded_total)
        completed = attr.completed or s.completed
        plans = [_plan(level, paid, refunded, completed, event_id) for level in levels.get(key, [])]
        if any(plan is None for plan in plans):
            continue
        for plan in plans:
            assert plan is not None
            change, moves = plan
            if change is not None:
                changes.append(change)
            entries.extend(moves)
        totals.append(
            repo.AttributionTotals(
                source_type=s.type,
                source_id=s.id,
                paid_total=paid,
                refunded_total=refunded,
                completed=completed,
                refunded_after_completion_at=(
                    now
                    if attr.completed and s.refunded_total > attr.refunded_total
                    else attr.refunded_after_completion_at
                ),
            )
        )
        done.add(key)
    if totals:
        await repo.settle_many(session, totals, changes, entries)
    return done


def _plan(
    level: repo.CommissionRow, paid: int, refunded: int, completed: bool, event_id: str
) -> tuple[repo.CommissionChange | None, list[NewEntry]] | None:
    """What ``service._settle`` does to one commission, as data: its change and entries;
    None when a reversal would take from an available balance (left to that path)."""
    target = target_amount(paid, refunded, level.rate_bps)
    delta = target - level.amount
    state = level.state
    d = level.distributor_id

    def entry(kind: str, debit: str, credit: str, amount: int) -> NewEntry:
        return NewEntry(
            level.merchant_id, level.id, event_id, kind, debit, credit, amount, level.currency
        )

    expense = expense_account(level.merchant_id)
    moves: list[NewEntry] = []
    if delta > 0:
        moves.append(entry("accrue", expense, account(d, state), delta))
    elif delta < 0:
        if state != "pending":
            return None
        moves.append(entry("reverse", account(d, "pending"), expense, -delta))
    if completed and state == "pending":
        if target > 0:
            moves.append(entry("release", account(d, "pending"), account(d, "available"), target))
        state = "available"
    changed = target != level.amount or state != level.state
    return (repo.CommissionChange(level.id, target, state) if changed else None), moves


async def _write(
    session: AsyncSession,
    bindings: list[NewBinding],
    attributions: list[NewAttribution],
    commissions: list[NewCommission],
    entries: list[NewEntry],
) -> set[repo.SourceKey]:
    if bindings:
        await repo.bind_many(session, bindings)
    return await repo.insert_attributed(session, attributions, commissions, entries)


def _first_entries(c: NewCommission, event_id: str) -> list[NewEntry]:
    """What ``service._settle`` posts for a commission that held nothing: the accrual and,
    when the source is complete already, its release."""
    if c.amount <= 0:
        return []
    pending = account(c.distributor_id, "pending")
    out = [
        NewEntry(
            merchant_id=c.merchant_id,
            commission_id=c.id,
            source_event=event_id,
            kind="accrue",
            debit_account=expense_account(c.merchant_id),
            credit_account=pending,
            amount=c.amount,
            currency=c.currency,
        )
    ]
    if c.state == "available":
        out.append(
            NewEntry(
                merchant_id=c.merchant_id,
                commission_id=c.id,
                source_event=event_id,
                kind="release",
                debit_account=pending,
                credit_account=account(c.distributor_id, "available"),
                amount=c.amount,
                currency=c.currency,
            )
        )
    return out


async def _code_owners(
    session: AsyncSession, codes: set[str]
) -> dict[str, tuple[uuid.UUID, str, uuid.UUID | None]]:
    """code -> (distributor, merchant, link): a distributor's own code, else a link's."""
    if not codes:
        return {}
    found: dict[str, tuple[uuid.UUID, str, uuid.UUID | None]] = {
        code: (d.id, d.merchant_id, None)
        for code, d in (await programs.distributors_by_code(session, codes)).items()
    }
    rest = codes - found.keys()
    if rest:
        for code, link in (await links.links_by_code(session, rest)).items():
            found[code] = (link.distributor_id, link.merchant_id, link.id)
    return found

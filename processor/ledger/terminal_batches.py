"""End-of-day terminal batches: a terminal's totals (0500) against what the store recorded for it.

Closing a batch claims, in one transaction, every request of the terminal in that currency not yet in a
batch (`auths.batch_id IS NULL`), so each request is counted in exactly one batch even while the terminal
or its neighbours keep sending. The store's totals are computed over the claimed rows:

    debits   approved 0200 purchases/cash (`debit`) and 0220 completions (`capture`)
    credits  approved refunds (`credit`)

each at its approved amount less what a reversal of it in the same batch gave back; a request reversed in
full is not counted. Pre-authorizations, balance inquiries and declines move no money at the terminal's
close and are not counted. The batch is closed whether or not the totals agree (the store's are the
authoritative ones): an out-of-balance batch (95) stays on record with both sets for the operator.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, insert, select, update

from processor.iso8583 import BatchTotals
from processor.ledger.apply import KeySerialReplayed, claim_ksn_counter
from processor.ledger.errors import StoreError
from processor.ledger.interface import StoreInterface
from processor.ledger.models import auths, terminal_batches, utcnow

IN_BALANCE = "00"
OUT_OF_BALANCE = "95"
_APPROVED = ("approved", "partial")  # ops.Result values of an approval
_DEBIT_OPS = ("debit", "capture")
_COUNTED_OPS = (*_DEBIT_OPS, "credit", "reverse")


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """A closed batch; `duplicate` when it is the stored answer to a retransmitted 0500."""

    batch_id: int
    terminal_id: str
    batch_number: str
    currency: str
    terminal: BatchTotals
    host: BatchTotals
    rc: str
    closed_at: dt.datetime
    duplicate: bool = False

    @property
    def in_balance(self) -> bool:
        return self.rc == IN_BALANCE

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.batch_id,
            "terminal_id": self.terminal_id,
            "batch_number": self.batch_number,
            "currency": self.currency,
            "rc": self.rc,
            "in_balance": self.in_balance,
            "terminal": self.terminal.as_json(),
            "host": self.host.as_json(),
            "closed_at": self.closed_at.isoformat(),
        }


async def close(
    store: StoreInterface,
    *,
    idem_key: str,
    terminal_id: str,
    batch_number: str,
    currency: str,
    totals: BatchTotals,
    now: dt.datetime | None = None,
    ksn_counter: int | None = None,
) -> BatchOutcome:
    """Close the terminal's open batch (0500) and compare totals; a repeated `idem_key` gets the first answer.

    With `ksn_counter`, the close is the terminal's DUKPT transaction with that counter: it must be above
    the terminal's last one (KeySerialReplayed otherwise, and nothing is closed).
    """
    try:
        return await store.run_write(
            _close, idem_key, terminal_id, batch_number, currency, totals, now or utcnow(), ksn_counter
        )
    except StoreError:
        # Two copies of one 0500 raced on the idempotency key: the loser answers with the winner's batch.
        stored = await store.run_query(_find, idem_key)
        if stored is None:
            raise
        return stored


async def open_totals(store: StoreInterface, terminal_id: str, currency: str) -> BatchTotals:
    """What the terminal's open batch in `currency` holds so far, by the same rules (nothing is claimed)."""
    return await store.run_read(_open_totals, terminal_id, currency)


async def list_closed(store: StoreInterface, terminal_id: str, limit: int = 100) -> list[BatchOutcome]:
    """The terminal's closed batches, newest first."""
    return await store.run_query(_list_closed, terminal_id, limit)


_BATCH_COLS = tuple(
    terminal_batches.c[name]
    for name in (
        "id", "idem_key", "terminal_id", "batch_number", "currency", "credits_count", "credits_minor", "debits_count",
        "debits_minor", "host_credits_count", "host_credits_minor", "host_debits_count", "host_debits_minor", "rc",
        "closed_at",
    )
)


def _outcome(row: Any, *, duplicate: bool) -> BatchOutcome:
    return BatchOutcome(
        batch_id=row.id,
        terminal_id=row.terminal_id,
        batch_number=row.batch_number,
        currency=row.currency,
        terminal=BatchTotals(row.credits_count, row.credits_minor, row.debits_count, row.debits_minor),
        host=BatchTotals(row.host_credits_count, row.host_credits_minor, row.host_debits_count, row.host_debits_minor),
        rc=row.rc,
        closed_at=row.closed_at,
        duplicate=duplicate,
    )


def _find(conn: Connection, idem_key: str) -> BatchOutcome | None:
    """The batch closed by the 0500 with this idempotency key, as its stored first answer."""
    row = conn.execute(select(*_BATCH_COLS).where(terminal_batches.c.idem_key == idem_key)).first()
    return _outcome(row, duplicate=True) if row is not None else None


def net_totals(rows: Any) -> BatchTotals:
    """Totals of approved debits and credits, each net of what its reversals in the same rows gave back."""
    net: dict[int, tuple[str, int]] = {row.id: (row.op, row.approved_minor) for row in rows if row.op != "reverse"}
    for row in rows:
        if row.op == "reverse" and row.original_auth_id in net:
            op, amount = net[row.original_auth_id]
            net[row.original_auth_id] = (op, amount - row.approved_minor)
    credits = [amount for op, amount in net.values() if op == "credit" and amount > 0]
    debits = [amount for op, amount in net.values() if op in _DEBIT_OPS and amount > 0]
    return BatchTotals(len(credits), sum(credits), len(debits), sum(debits))


def _counted_totals(conn: Connection, *where: Any) -> BatchTotals:
    """The totals of the approved debits, credits and reversals among the auths rows `where` selects."""
    rows = conn.execute(
        select(auths.c.id, auths.c.op, auths.c.approved_minor, auths.c.original_auth_id).where(
            *where, auths.c.op.in_(_COUNTED_OPS), auths.c.result.in_(_APPROVED)
        )
    ).all()
    return net_totals(rows)


def host_totals(conn: Connection, batch_id: int) -> BatchTotals:
    """The store's totals over the requests claimed by `batch_id` (see the module's rules)."""
    return _counted_totals(conn, auths.c.batch_id == batch_id)


def _close(
    conn: Connection,
    idem_key: str,
    terminal_id: str,
    batch_number: str,
    currency: str,
    totals: BatchTotals,
    now: dt.datetime,
    ksn_counter: int | None = None,
) -> BatchOutcome:
    """Close the terminal's open batch in `currency` and compare its totals with ours (00 or 95)."""
    stored = _find(conn, idem_key)
    if stored is not None:
        return stored
    if ksn_counter is not None and not claim_ksn_counter(conn, terminal_id, ksn_counter):
        raise KeySerialReplayed(f"DUKPT counter {ksn_counter} is not above terminal {terminal_id}'s last one")
    batch_id = conn.execute(
        insert(terminal_batches).returning(terminal_batches.c.id),
        {
            "idem_key": idem_key,
            "terminal_id": terminal_id,
            "batch_number": batch_number,
            "currency": currency,
            "credits_count": totals.credits_count,
            "credits_minor": totals.credits_minor,
            "debits_count": totals.debits_count,
            "debits_minor": totals.debits_minor,
            "host_credits_count": 0,
            "host_credits_minor": 0,
            "host_debits_count": 0,
            "host_debits_minor": 0,
            "rc": IN_BALANCE,
            "closed_at": now,
        },
    ).scalar_one()
    conn.execute(
        update(auths)
        .where(auths.c.terminal_id == terminal_id, auths.c.batch_id.is_(None), auths.c.currency == currency)
        .values(batch_id=batch_id)
    )
    host = host_totals(conn, batch_id)
    rc = IN_BALANCE if host == totals else OUT_OF_BALANCE
    conn.execute(
        update(terminal_batches)
        .where(terminal_batches.c.id == batch_id)
        .values(
            host_credits_count=host.credits_count,
            host_credits_minor=host.credits_minor,
            host_debits_count=host.debits_count,
            host_debits_minor=host.debits_minor,
            rc=rc,
        )
    )
    return BatchOutcome(batch_id, terminal_id, batch_number, currency, totals, host, rc, now)


def _open_totals(conn: Connection, terminal_id: str, currency: str) -> BatchTotals:
    return _counted_totals(
        conn, auths.c.terminal_id == terminal_id, auths.c.batch_id.is_(None), auths.c.currency == currency
    )


def _list_closed(conn: Connection, terminal_id: str, limit: int) -> list[BatchOutcome]:
    rows = conn.execute(
        select(*_BATCH_COLS)
        .where(terminal_batches.c.terminal_id == terminal_id)
        .order_by(terminal_batches.c.id.desc())
        .limit(limit)
    ).all()
    return [_outcome(row, duplicate=False) for row in rows]

"""Closing a business day: `settle_day(store, day, config)`.

The run has three steps, each safe to kill and to repeat:

1. Claim. The approved money-moving requests since the last settled day (purchases, cash, completions,
   refunds and reversals; pre-authorizations move no money until completed) are read in chunks of
   auth ids (keyset pagination) and each becomes one `settlement_items` row for this day, unique by its
   source. A chunk is one transaction: a killed run keeps whole chunks and the next run goes on from the
   last one. Claimed items are not money: nothing is posted yet.
2. Post. In ONE transaction the day's items are totalled per merchant and per network, each position gets
   one balanced journal entry (clearing -> merchant payable, fee income, interchange income; or clearing ->
   network settlement, interchange income), exceptions are recorded and the day becomes `settled`. A kill
   before the commit leaves no posting at all; after it, everything.
3. Files. The settlement and payout files are written from the settled rows (temp file + rename); a rerun
   of a settled day writes any that are missing and posts nothing.

A request captured after its day was settled (a reversal that came late, a completion of an older
pre-authorization, a presentment) is claimed by the next day that is run, as an adjustment: its
`origin_date` names the day it belongs to, and both days' reports show it.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, String, cast, func, insert, literal, select, update

from processor import ledger
from processor.errors import InvalidRequest
from processor.ledger import StoreInterface
from processor.ledger.apply import BatchState, internal_account, post_entry
from processor.ledger.models import accounts, auths, holds, merchants, terminal_batches, terminals, utcnow
from processor.ledger.outbox import operator_event, write_events
from processor.settlement.bulk import ITEM_COLUMNS, insert_rows, refresh_statistics
from processor.settlement.config import SettlementConfig
from processor.settlement.models import (
    settlement_days,
    settlement_exceptions,
    settlement_items,
    settlement_positions,
)

CHUNK = 5000
# A request is durable before it is answered, within a group commit: well under this after its timestamp.
COMMIT_GRACE = dt.timedelta(seconds=5)
_APPROVED = ("00", "10")
_MONEY_OPS = ("debit", "capture", "credit", "reverse")
KIND_SIGN = {"purchase": 1, "completion": 1, "refund": -1, "reversal": -1, "refund_reversal": 1,
             "presentment": 1, "presentment_credit": -1}

Progress = Callable[[str, int, int | None], None]
EndOfDayJob = Callable[[Any, dt.date, tuple[dt.datetime, dt.datetime]], Awaitable[dict[str, Any]]]
# Jobs every settled day runs after its postings (e.g. savings interest accrual), in order; each gets the
# store, the business date and its UTC window, must be idempotent for that date, and returns a summary.
END_OF_DAY_JOBS: list[tuple[str, EndOfDayJob]] = []


def register_end_of_day_job(name: str, job: EndOfDayJob) -> None:
    """Add a job that `settle run` runs for every day it settles (once the day's postings are committed)."""
    if any(existing == name for existing, _ in END_OF_DAY_JOBS):
        raise ValueError(f"end-of-day job {name!r} is already registered")
    END_OF_DAY_JOBS.append((name, job))


a, au, sd, si = accounts.c, auths.c, settlement_days.c, settlement_items.c


@dataclass(frozen=True, slots=True)
class DayHandle:
    business_date: str
    state: str
    window_start: dt.datetime
    window_end: dt.datetime
    scanned_to_id: int


# ------------------------------------------------------------------ step 0: the day row


def _as_utc(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def begin_day(conn: Connection, day: dt.date, start: dt.datetime, end: dt.datetime, cutoff: str, zone: str) -> DayHandle:
    """The day's row, created (state running) when the day is run for the first time."""
    key = day.isoformat()
    row = conn.execute(select(settlement_days).where(sd.business_date == key)).first()
    if row is None:
        later = conn.execute(
            select(sd.business_date).where(sd.business_date > key, sd.state == "settled").order_by(sd.business_date).limit(1)
        ).scalar()
        if later is not None:
            raise InvalidRequest(
                f"day {key} comes before the settled day {later}: what it held was carried into {later} as adjustments"
            )
        scan_from = conn.execute(select(func.max(sd.next_scan_id)).where(sd.state == "settled")).scalar() or 0
        conn.execute(
            insert(settlement_days),
            {
                "business_date": key, "state": "running", "window_start": start, "window_end": end, "cutoff": cutoff,
                "timezone": zone, "scan_from_id": scan_from, "scanned_to_id": scan_from, "next_scan_id": None,
                "runs": 1, "started_at": utcnow(), "settled_at": None, "summary": None,
            },
        )
        return DayHandle(key, "running", start, end, scan_from)
    if row.state == "running":
        conn.execute(update(settlement_days).where(sd.business_date == key).values(runs=sd.runs + 1))
    return DayHandle(key, row.state, _as_utc(row.window_start), _as_utc(row.window_end), row.scanned_to_id)


def _unsettled_earlier_day(conn: Connection, after_id: int, start: dt.datetime, config: SettlementConfig, key: str) -> str | None:
    """An earlier day that still has unclaimed money-moving requests and was never settled, if any."""
    first = conn.execute(
        select(func.min(au.created_at)).where(
            au.id > after_id, au.created_at < start, au.op.in_(_MONEY_OPS), au.rc.in_(_APPROVED), au.approved_minor > 0,
            ~select(si.id).where(si.source_key == literal("auth:") + cast(au.id, String)).exists(),
        )
    ).scalar()
    if first is None:
        return None
    origin = config.calendar.day_of(_as_utc(first)).isoformat()
    settled = conn.execute(select(sd.state).where(sd.business_date == origin)).scalar()
    return None if settled == "settled" or origin >= key else origin


# ------------------------------------------------------------------ step 1: claim


@dataclass(slots=True)
class ClaimResult:
    last_id: int
    scanned: int
    claimed: int
    done: bool


_orig = auths.alias("orig")
_CLAIM_COLS = (
    au.id, au.op, au.terminal_id, au.card_id, au.approved_minor, au.currency, au.created_at, au.acquirer_id,
    au.merchant_id, au.mcc, au.entry_mode, au.batch_id,
    _orig.c.op.label("orig_op"), _orig.c.created_at.label("orig_created_at"), _orig.c.entry_mode.label("orig_entry_mode"),
    merchants.c.merchant_id.label("our_merchant"), merchants.c.mcc.label("our_mcc"),
)


def _kind(op: str, orig_op: str | None) -> str | None:
    if op == "debit":
        return "purchase"
    if op == "capture":
        return "completion"
    if op == "credit":
        return "refund"
    if op == "reverse":
        return {"debit": "reversal", "capture": "reversal", "credit": "refund_reversal"}.get(orig_op or "")
    return None


def claim_chunk(
    conn: Connection, handle: DayHandle, after_id: int, config: SettlementConfig, networks: frozenset[str]
) -> ClaimResult:
    """Claim the next chunk of requests for the day; records how far the scan got in the same transaction."""
    rows = conn.execute(
        select(*_CLAIM_COLS)
        .select_from(
            auths.outerjoin(_orig, _orig.c.id == au.original_auth_id)
            .outerjoin(terminals, terminals.c.terminal_id == au.terminal_id)
            .outerjoin(merchants, merchants.c.id == terminals.c.merchant_id)
        )
        .where(au.id > after_id, au.op.in_(_MONEY_OPS), au.rc.in_(_APPROVED), au.approved_minor > 0)
        .order_by(au.id)
        .limit(CHUNK)
    ).all()
    if not rows:
        return ClaimResult(after_id, 0, 0, True)
    keys = [f"auth:{r.id}" for r in rows]
    taken = set(conn.execute(select(si.source_key).where(si.source_key.in_(keys))).scalars())
    calendar, key = config.calendar, handle.business_date
    items: list[tuple[Any, ...]] = []
    first_left: int | None = None
    for r in rows:
        if f"auth:{r.id}" in taken:
            continue
        captured = _as_utc(r.created_at)
        if captured >= handle.window_end:
            first_left = r.id if first_left is None else first_left
            continue
        kind = _kind(r.op, r.orig_op)
        if kind is None:
            continue  # releasing a pre-authorization's hold moves no money
        if r.acquirer_id in networks:
            side, party = "off_us", r.acquirer_id
        elif r.our_merchant is not None:
            side, party = "on_us", r.our_merchant
        else:
            side, party = "on_us", r.merchant_id or r.terminal_id
        mcc = r.our_mcc if side == "on_us" and r.our_mcc else r.mcc
        entry_mode = r.entry_mode or r.orig_entry_mode or ""
        amount = KIND_SIGN[kind] * r.approved_minor
        fee, interchange = config.fees.fees(kind, r.approved_minor, mcc or "", entry_mode)
        if side == "off_us":
            fee = 0
        origin_at = _as_utc(r.orig_created_at) if r.orig_created_at is not None and kind != "refund" else captured
        if handle.window_start <= origin_at <= captured:
            origin = key  # the usual case, without a time-zone conversion
        else:
            origin = min(calendar.day_of(origin_at), calendar.day_of(captured)).isoformat()
        items.append((
            f"auth:{r.id}", key, origin, side, kind, party[:32], r.terminal_id or "", mcc or "", entry_mode, r.id, r.card_id,
            amount, fee, interchange, r.currency, captured,
        ))
    insert_rows(conn, settlement_items, ITEM_COLUMNS, items)
    last_id = rows[-1].id
    conn.execute(update(settlement_days).where(sd.business_date == key).values(scanned_to_id=last_id))
    if first_left is not None:
        current = conn.execute(select(sd.next_scan_id).where(sd.business_date == key)).scalar()
        if current is None or first_left - 1 < current:
            conn.execute(update(settlement_days).where(sd.business_date == key).values(next_scan_id=first_left - 1))
    return ClaimResult(last_id, len(rows), len(items), len(rows) < CHUNK)


# ------------------------------------------------------------------ step 2: post


def _exception(conn: Connection, key: str, kind: str, reference: str, detail: str, amount: int | None = None, currency: str = "") -> None:
    exists = conn.execute(
        select(settlement_exceptions.c.id).where(
            settlement_exceptions.c.kind == kind, settlement_exceptions.c.reference == reference
        )
    ).first()
    if exists is None:
        conn.execute(
            insert(settlement_exceptions),
            {"business_date": key, "kind": kind, "reference": reference[:120], "detail": detail[:300],
             "amount_minor": amount, "currency": currency, "created_at": utcnow()},
        )


def _positions(conn: Connection, key: str) -> dict[tuple[str, str, str], dict[str, int]]:
    """Per (side, party, currency): counts and sums by kind, adjustments, fees and interchange."""
    out: dict[tuple[str, str, str], dict[str, int]] = {}
    late = si.origin_date < key
    for r in conn.execute(
        select(
            si.side, si.party, si.currency, si.kind, late.label("late"), func.count().label("n"),
            func.sum(si.amount_minor).label("amount"), func.sum(si.fee_minor).label("fee"),
            func.sum(si.interchange_minor).label("ic"),
        )
        .where(si.business_date == key)
        .group_by(si.side, si.party, si.currency, si.kind, late)
    ):
        p = out.setdefault(
            (r.side, r.party, r.currency),
            {k: 0 for k in ("purchases_count", "purchases_minor", "refunds_count", "refunds_minor", "reversals_count",
                            "reversals_minor", "adjustments_count", "adjustments_minor", "gross_minor", "fee_minor",
                            "interchange_minor")},
        )
        amount = int(r.amount or 0)
        if r.kind in ("purchase", "completion", "presentment"):
            p["purchases_count"] += r.n
            p["purchases_minor"] += amount
        elif r.kind in ("refund", "presentment_credit"):
            p["refunds_count"] += r.n
            p["refunds_minor"] -= amount
        else:
            p["reversals_count"] += r.n
            p["reversals_minor"] -= amount
        if r.late:
            p["adjustments_count"] += r.n
            p["adjustments_minor"] += amount
        p["gross_minor"] += amount
        p["fee_minor"] += int(r.fee or 0)
        p["interchange_minor"] += int(r.ic or 0)
    return out


def post_day(conn: Connection, handle: DayHandle, config: SettlementConfig, holds_expired: int) -> dict[str, Any]:
    """Post every position of the day, record its exceptions and mark it settled: one transaction."""
    key = handle.business_date
    row = conn.execute(select(sd.state, sd.summary).where(sd.business_date == key)).first()
    if row.state == "settled":
        return json.loads(row.summary)
    st = BatchState(now=utcnow(), internal_ids={})
    positions = _positions(conn, key)
    if conn.dialect.name == "postgresql":
        # The internal accounts are the hot path's too: lock them in id order, as its batches do.
        for currency in sorted({c for _, _, c in positions}):
            for purpose in ("clearing", "merchant_payable", "fee_income", "interchange_income", "network_settlement"):
                internal_account(conn, st, purpose, currency)
        ids = sorted(set(st.new_internal_ids.values()))
        if ids:
            conn.execute(select(a.id).where(a.id.in_(ids)).order_by(a.id).with_for_update())
    deltas: defaultdict[int, int] = defaultdict(int)
    merchants_out, networks_out = [], []
    for (side, party, currency), p in sorted(positions.items()):
        gross, fee, ic = p["gross_minor"], p["fee_minor"], p["interchange_minor"]
        clearing = internal_account(conn, st, "clearing", currency)
        if side == "on_us":
            net = gross - fee
            lines = [(clearing, -gross), (internal_account(conn, st, "merchant_payable", currency), net),
                     (internal_account(conn, st, "interchange_income", currency), ic),
                     (internal_account(conn, st, "fee_income", currency), fee - ic)]
        else:
            net = gross - ic
            lines = [(clearing, -gross), (internal_account(conn, st, "network_settlement", currency), net),
                     (internal_account(conn, st, "interchange_income", currency), ic)]
        lines = [(acc, amt) for acc, amt in lines if amt]
        entry_id = None
        if lines:
            entry_id = post_entry(conn, st, "settlement", f"settlement:{key}:{side}:{party}", lines, currency)
            for acc, amt in lines:
                deltas[acc] += amt
        conn.execute(
            insert(settlement_positions),
            {"business_date": key, "side": side, "party": party, "currency": currency, **p, "net_minor": net,
             "entry_id": entry_id},
        )
        record = {"party": party, "currency": currency, **p, "net_minor": net}
        (merchants_out if side == "on_us" else networks_out).append(record)
    for acc, amt in sorted(deltas.items()):
        conn.execute(update(accounts).where(a.id == acc).values(ledger_minor=a.ledger_minor + amt))
    _batch_exceptions(conn, handle)
    _expired_preauths(conn, handle)
    totals = conn.execute(
        select(si.currency, func.count().label("n"), func.sum(si.amount_minor).label("net"),
               func.sum(func.abs(si.amount_minor)).label("control"))
        .where(si.business_date == key).group_by(si.currency)
    ).all()
    exceptions = {
        r.kind: r.n for r in conn.execute(
            select(settlement_exceptions.c.kind, func.count().label("n"))
            .where(settlement_exceptions.c.business_date == key).group_by(settlement_exceptions.c.kind)
        )
    }
    day = conn.execute(select(settlement_days).where(sd.business_date == key)).one()
    next_scan = day.next_scan_id if day.next_scan_id is not None else day.scanned_to_id
    settled_at = utcnow()
    summary = {
        "business_date": key,
        "state": "settled",
        "window": {"start": handle.window_start.isoformat(), "end": handle.window_end.isoformat(),
                   "hours": round((handle.window_end - handle.window_start).total_seconds() / 3600, 2)},
        "cutoff": day.cutoff,
        "timezone": day.timezone,
        "settled_at": settled_at.isoformat(),
        "items": sum(r.n for r in totals),
        "totals": {r.currency: {"items": r.n, "net_minor": int(r.net or 0), "control_sum_minor": int(r.control or 0)}
                   for r in totals},
        "merchants": merchants_out,
        "networks": networks_out,
        "holds_expired": holds_expired,
        "exceptions": exceptions,
    }
    conn.execute(
        update(settlement_days).where(sd.business_date == key).values(
            state="settled", settled_at=settled_at, next_scan_id=next_scan, summary=json.dumps(summary)
        )
    )
    # Operators hear of it from the outbox (the broker's events/operators/settlement/finished): the totals,
    # not the per-merchant lines, which `processor settle report` shows.
    write_events(conn, [operator_event("settlement.finished", {
        "business_date": key, "settled_at": summary["settled_at"], "items": summary["items"],
        "totals": summary["totals"], "merchants": len(merchants_out), "networks": len(networks_out),
        "holds_expired": holds_expired, "exceptions": exceptions,
    }, settled_at)])
    return summary


def _batch_exceptions(conn: Connection, handle: DayHandle) -> None:
    """Terminal batches closed out of balance in the day, and terminals whose day was never closed."""
    key, tb = handle.business_date, terminal_batches.c
    for r in conn.execute(
        select(tb.id, tb.terminal_id, tb.batch_number, tb.currency, tb.debits_minor, tb.host_debits_minor,
               tb.credits_minor, tb.host_credits_minor)
        .where(tb.rc == "95", tb.closed_at >= handle.window_start, tb.closed_at < handle.window_end)
    ):
        _exception(
            conn, key, "batch_out_of_balance", f"batch:{r.id}",
            f"terminal {r.terminal_id} batch {r.batch_number}: terminal debits {r.debits_minor} credits "
            f"{r.credits_minor}, ours {r.host_debits_minor} {r.host_credits_minor}",
            r.host_debits_minor - r.debits_minor, r.currency,
        )
    for r in conn.execute(
        select(si.terminal_id, func.count().label("n"), func.sum(si.amount_minor).label("amount"), si.currency)
        .select_from(settlement_items.join(auths, au.id == si.auth_id))
        .where(si.business_date == key, si.side == "on_us", au.batch_id.is_(None))
        .group_by(si.terminal_id, si.currency)
    ):
        _exception(
            conn, key, "batch_not_closed", f"{key}:{r.terminal_id}:{r.currency}",
            f"terminal {r.terminal_id} did not close its batch: {r.n} transactions settled without a 0500",
            int(r.amount or 0), r.currency,
        )


def _expired_preauths(conn: Connection, handle: DayHandle) -> None:
    """Pre-authorizations whose hold expired in the day without a completion (one exception per day)."""
    h = holds.c
    row = conn.execute(
        select(func.count().label("n"), func.sum(h.amount_minor).label("amount"), func.min(h.currency).label("currency"))
        .where(h.status == "expired", h.expires_at >= handle.window_start, h.expires_at < handle.window_end)
    ).one()
    if row.n:
        _exception(
            conn, handle.business_date, "auth_never_captured", f"{handle.business_date}:expired-holds",
            f"{row.n} authorizations expired in the day without a completion or presentment; holds released",
            int(row.amount or 0), row.currency or "",
        )


# ------------------------------------------------------------------ the whole run


async def settle_day(
    store: StoreInterface,
    day: dt.date,
    config: SettlementConfig,
    *,
    out_dir: Any = None,
    now: dt.datetime | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Close business day `day`: claim, post, write files; idempotent and safe to kill at any point."""
    from processor.settlement.files import write_day_files
    from processor.settlement.queries import network_ids

    now = now or utcnow()
    start, end = config.calendar.window(day)
    key = day.isoformat()
    if now < end + COMMIT_GRACE:
        local_end = end.astimezone(config.calendar.zone)
        raise InvalidRequest(
            f"business day {key} is not over until {local_end:%Y-%m-%d %H:%M:%S %Z} "
            f"({config.calendar.cutoff} {config.calendar.timezone}); settle it after the cutoff"
        )
    handle = await store.run_write(begin_day, day, start, end, config.calendar.cutoff, config.calendar.timezone)
    holds_expired = 0
    if handle.state != "settled":
        earlier = await store.run_read(_unsettled_earlier_day, handle.scanned_to_id, start, config, key)
        if earlier is not None:
            raise InvalidRequest(f"day {earlier} has transactions and is not settled; settle it before {key}")
        await store.run_write(refresh_statistics, (auths, holds, settlement_items))
        holds_expired = await ledger.holds.expire(store, end)
        networks = frozenset(await store.run_read(network_ids))
        after, scanned, claimed = handle.scanned_to_id, 0, 0
        while True:
            result = await store.run_write(claim_chunk, handle, after, config, networks)
            after, scanned, claimed = result.last_id, scanned + result.scanned, claimed + result.claimed
            if progress:
                progress("claim", scanned, None)
            if result.done:
                break
        summary = await store.run_write(post_day, handle, config, holds_expired)
        jobs = {}
        for name, job in END_OF_DAY_JOBS:
            jobs[name] = await job(store, day, (start, end))
        summary["jobs"] = jobs
    else:
        summary = await store.run_read(_summary, key)
    summary["files"] = await write_day_files(store, key, out_dir, progress=progress)
    return summary


def _summary(conn: Connection, key: str) -> dict[str, Any]:
    return json.loads(conn.execute(select(sd.summary).where(sd.business_date == key)).scalar_one())

"""Read-only queries of settlement: days and their state, items page by page, exceptions, day statistics."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from sqlalchemy import Connection, case, func, select

from processor.ledger.models import auths, config, holds
from processor.settlement.models import (
    clearing_files,
    presentments,
    settlement_days,
    settlement_exceptions,
    settlement_items,
    settlement_positions,
)

sd, si, se, au = settlement_days.c, settlement_items.c, settlement_exceptions.c, auths.c

ITEM_COLUMNS = (
    "id", "source_key", "business_date", "origin_date", "side", "kind", "party", "terminal_id", "mcc", "entry_mode",
    "auth_id", "card_id", "amount_minor", "fee_minor", "interchange_minor", "currency", "captured_at",
)


def network_ids(conn: Connection) -> list[str]:
    """Acquirer ids (DE 32) of the registered acquiring networks."""
    return [k.split(".", 1)[1] for k in conn.execute(select(config.c.key).where(config.c.key.like("network.%"))).scalars()]


def networks(conn: Connection) -> dict[str, str]:
    return {
        r.key.split(".", 1)[1]: json.loads(r.value)["name"]
        for r in conn.execute(select(config.c.key, config.c.value).where(config.c.key.like("network.%")))
    }


def day_row(conn: Connection, key: str) -> dict[str, Any] | None:
    row = conn.execute(select(settlement_days).where(sd.business_date == key)).first()
    return dict(row._mapping) if row is not None else None


def list_days(conn: Connection, limit: int = 60) -> list[dict[str, Any]]:
    """Known days, newest first, with item and exception counts."""
    counts = {
        r.business_date: r.n
        for r in conn.execute(select(se.business_date, func.count().label("n")).group_by(se.business_date))
    }
    out = []
    for r in conn.execute(select(settlement_days).order_by(sd.business_date.desc()).limit(limit)):
        summary = json.loads(r.summary) if r.summary else {}
        out.append(
            {
                "business_date": r.business_date,
                "state": r.state,
                "exceptions": counts.get(r.business_date, 0),
                "items": summary.get("items"),
                "window_start": r.window_start.isoformat() if r.window_start else None,
                "window_end": r.window_end.isoformat() if r.window_end else None,
                "runs": r.runs,
                "settled_at": r.settled_at.isoformat() if r.settled_at else None,
            }
        )
    return out


def items_page(conn: Connection, key: str, after_id: int, limit: int) -> list[tuple[Any, ...]]:
    """The day's items with id > after_id, in id order (keyset pagination)."""
    cols = [getattr(si, c) for c in ITEM_COLUMNS]
    return [tuple(r) for r in conn.execute(
        select(*cols).where(si.business_date == key, si.id > after_id).order_by(si.id).limit(limit)
    )]


def positions(conn: Connection, key: str) -> list[dict[str, Any]]:
    sp = settlement_positions.c
    return [dict(r._mapping) for r in conn.execute(
        select(settlement_positions).where(sp.business_date == key).order_by(sp.side, sp.party, sp.currency)
    )]


def exceptions(conn: Connection, key: str) -> list[dict[str, Any]]:
    return [
        {"id": r.id, "business_date": r.business_date, "kind": r.kind, "reference": r.reference, "detail": r.detail,
         "amount_minor": r.amount_minor, "currency": r.currency}
        for r in conn.execute(select(settlement_exceptions).where(se.business_date == key).order_by(se.id))
    ]


def later_adjustments(conn: Connection, key: str) -> list[dict[str, Any]]:
    """Items that belong to `key` but were settled in a later day, summed per day, side, party and kind."""
    return [
        {"settled_in": r.business_date, "side": r.side, "party": r.party, "kind": r.kind, "count": r.n,
         "amount_minor": int(r.amount or 0), "currency": r.currency}
        for r in conn.execute(
            select(si.business_date, si.side, si.party, si.kind, si.currency, func.count().label("n"),
                   func.sum(si.amount_minor).label("amount"))
            .where(si.origin_date == key, si.business_date > key)
            .group_by(si.business_date, si.side, si.party, si.kind, si.currency)
            .order_by(si.business_date, si.side, si.party)
        )
    ]


def day_statistics(conn: Connection, start: dt.datetime, end: dt.datetime) -> dict[str, Any]:
    """Requests of the window: per UTC hour (all, approved), approval rate, top decline reasons."""
    approved = case((au.rc.in_(("00", "10")), 1), else_=0)
    if conn.dialect.name == "postgresql":
        hour = func.to_char(func.date_trunc("hour", func.timezone("UTC", au.created_at)), "YYYY-MM-DD HH24")
    else:
        hour = func.strftime("%Y-%m-%d %H", au.created_at)
    card_ops = au.op.in_(("hold", "debit", "credit", "inquiry", "decline", "increment"))
    window = (au.created_at >= start, au.created_at < end, card_ops)
    by_hour = [
        {"hour_utc": r.hour, "requests": r.n, "approved": int(r.ok or 0), "amount_minor": int(r.amount or 0)}
        for r in conn.execute(
            select(hour.label("hour"), func.count().label("n"), func.sum(approved).label("ok"),
                   func.sum(au.approved_minor).label("amount"))
            .where(*window).group_by(hour).order_by(hour)
        )
    ]
    declines = [
        {"rc": r.rc, "reason": r.reason, "count": r.n}
        for r in conn.execute(
            select(au.rc, au.reason, func.count().label("n"))
            .where(*window, au.rc.not_in(("00", "10")))
            .group_by(au.rc, au.reason).order_by(func.count().desc(), au.rc).limit(10)
        )
    ]
    total = sum(h["requests"] for h in by_hour)
    ok = sum(h["approved"] for h in by_hour)
    h = holds.c
    expired = conn.execute(
        select(func.count()).where(h.status == "expired", h.expires_at >= start, h.expires_at < end)
    ).scalar_one()
    return {
        "requests": total,
        "approved": ok,
        "approval_rate": round(ok / total, 4) if total else None,
        "by_hour": by_hour,
        "top_declines": declines,
        "preauths_expired": expired,
    }


def presentment_summary(conn: Connection, key: str) -> list[dict[str, Any]]:
    pr, cf = presentments.c, clearing_files.c
    return [
        {"file_id": r.file_id, "network": r.network, "status": r.status, "count": r.n, "amount_minor": int(r.amount or 0),
         "currency": r.currency}
        for r in conn.execute(
            select(cf.file_id, cf.network, pr.status, pr.currency, func.count().label("n"),
                   func.sum(pr.amount_minor).label("amount"))
            .select_from(presentments.join(clearing_files, cf.id == pr.clearing_file_id))
            .where(pr.business_date == key)
            .group_by(cf.file_id, cf.network, pr.status, pr.currency)
            .order_by(cf.file_id, pr.status)
        )
    ]

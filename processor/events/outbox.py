"""The outbox's read side (the writers are `processor.ledger.outbox`, re-exported here): events in id order.

Writers call `write_events(conn, [...])` inside their own transaction, so an event exists exactly when its
change committed. Readers (the API's live feed, the MQTT publisher) read `after(position)` and remember the
highest id they handed on; delivery is at least once, and a consumer drops an id it has already seen.

A position can be one number because `read_after` never hands out an id while a smaller one may still
commit:
- SQLite has one writer at a time, so ids are given and committed in the same order.
- PostgreSQL writers do not wait for each other (no lock orders them); each event row's xmin is an xid
  assigned after its id (see `processor.ledger.outbox`). An event is handed out when every id between the
  reader's position and it is visible, or when no transaction older than its xmin is still running (the
  reading statement's own snapshot xmin), so no smaller id can still commit. Otherwise the read stops just
  before it, and a later read returns it, after the smaller ids that committed meanwhile.

Envelope (JSON, `schema_version` 1), the same on every consumer:

    {"schema_version": 1, "id": 42, "type": "payment.received", "audience": "cardholder",
     "cardholder_id": 7, "occurred_at": "2026-11-29T12:00:00.123456+00:00", "data": {...}}
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, func, insert, literal_column, select, update

from processor.ledger.outbox import (
    EVENT_TYPES,
    MAX_DATA_CHARS,
    READ_LIMIT_MAX,
    SCHEMA_VERSION,
    cardholder_event,
    event_consumers,
    events,
    operator_event,
    write_events,
)
from processor.ledger.models import utcnow

e = events.c
_COLUMNS = (e.id, e.audience, e.cardholder_id, e.type, e.data, e.created_at)
_AFTER = select(*_COLUMNS).where(e.id > bindparam("after")).order_by(e.id).limit(bindparam("limit"))
_AFTER_FOR = (
    select(*_COLUMNS).where(e.cardholder_id == bindparam("cid"), e.id > bindparam("after")).order_by(e.id).limit(bindparam("limit"))
)
# PostgreSQL: each row with the (32-bit) xid that inserted it, and the xmin and xmax of the very snapshot that found it.
_SETTLED = (
    literal_column("events.xmin::text::bigint").label("row_xid"),
    literal_column("pg_snapshot_xmin(pg_current_snapshot())::text::bigint").label("running_xmin"),
    literal_column("pg_snapshot_xmax(pg_current_snapshot())::text::bigint").label("next_xid"),
)
_PG_AFTER = select(*_COLUMNS, *_SETTLED).where(e.id > bindparam("after")).order_by(e.id).limit(bindparam("limit"))
_PG_AFTER_FOR = (
    select(*_COLUMNS, *_SETTLED)
    .where(e.cardholder_id == bindparam("cid"), e.id > bindparam("after"))
    .order_by(e.id)
    .limit(bindparam("limit"))
)


@dataclass(frozen=True, slots=True)
class Event:
    """One committed event as every consumer sees it."""

    id: int
    audience: str
    cardholder_id: int | None
    type: str
    data: dict[str, Any]
    occurred_at: dt.datetime

    def envelope(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "id": self.id,
            "type": self.type,
            "audience": self.audience,
            "cardholder_id": self.cardholder_id,
            "occurred_at": self.occurred_at.isoformat(),
            "data": self.data,
        }

    def to_json(self) -> str:
        return json.dumps(self.envelope(), separators=(",", ":"))


def _event(row: Any) -> Event:
    return Event(row.id, row.audience, row.cardholder_id, row.type, json.loads(row.data), row.created_at)


def read_after(conn: Connection, after_id: int, limit: int = 500, *, cardholder_id: int | None = None) -> list[Event]:
    """Committed events with id > after_id, oldest first (only one cardholder's when given)."""
    limit = max(1, min(limit, READ_LIMIT_MAX))
    if conn.dialect.name == "postgresql":
        return _settled(conn, after_id, limit, cardholder_id)
    if cardholder_id is None:
        rows = conn.execute(_AFTER, {"after": after_id, "limit": limit})
    else:
        rows = conn.execute(_AFTER_FOR, {"cid": cardholder_id, "after": after_id, "limit": limit})
    return [_event(r) for r in rows]


def _full_xid(xid32: int, next_xid: int) -> int:
    """A row's 32-bit xid as the 64-bit one (epoch included), knowing it is below the snapshot's xmax."""
    full = (next_xid & ~0xFFFFFFFF) | xid32
    return full - (1 << 32) if full > next_xid else full


def _settled(conn: Connection, after_id: int, limit: int, cardholder_id: int | None) -> list[Event]:
    """PostgreSQL: the rows after `after_id` up to the first one a smaller, still uncommitted id may precede."""
    if cardholder_id is None:
        rows = conn.execute(_PG_AFTER, {"after": after_id, "limit": limit})
    else:
        rows = conn.execute(_PG_AFTER_FOR, {"cid": cardholder_id, "after": after_id, "limit": limit})
    out: list[Event] = []
    previous = after_id
    for row in rows:
        # Every id between the position and this row was seen (the whole feed only), or the xid that wrote it is
        # behind every running transaction: nothing below it can still appear.
        contiguous = cardholder_id is None and row.id == previous + 1
        if not contiguous and _full_xid(row.row_xid, row.next_xid) > row.running_xmin:
            break
        out.append(_event(row))
        previous = row.id
    return out


def read_for(conn: Connection, cardholder_id: int, after_id: int, limit: int = 500) -> list[Event]:
    """One cardholder's committed events with id > after_id, oldest first."""
    return read_after(conn, after_id, limit, cardholder_id=cardholder_id)


def last_id(conn: Connection) -> int:
    """The highest committed event id (0 when there is none): where a consumer that wants only new events starts."""
    return int(conn.execute(select(func.coalesce(func.max(e.id), 0))).scalar_one())


def consumer_position(conn: Connection, name: str) -> int:
    """The id up to which consumer `name` has handed events on (0 for a new consumer)."""
    found = conn.execute(select(event_consumers.c.position).where(event_consumers.c.name == name)).scalar()
    return int(found or 0)


def advance_consumer(conn: Connection, name: str, position: int) -> int:
    """Move consumer `name` forward to `position` (never back); returns its position afterwards."""
    c = event_consumers.c
    now = utcnow()
    moved = conn.execute(
        update(event_consumers).where(c.name == name, c.position < position).values(position=position, updated_at=now)
    ).rowcount
    if not moved and conn.execute(select(c.name).where(c.name == name)).first() is None:
        conn.execute(insert(event_consumers), {"name": name, "position": position, "updated_at": now})
    return consumer_position(conn, name)


class Deduplicator:
    """Per-consumer drop of events already handed on: ids arrive in increasing order, so the highest is enough."""

    def __init__(self, position: int = 0) -> None:
        self.position = position

    def fresh(self, items: Iterable[Event]) -> list[Event]:
        """The events not seen yet, in order; remembers them as seen."""
        out = []
        for item in items:
            if item.id > self.position:
                out.append(item)
                self.position = item.id
        return out


__all__ = [
    "EVENT_TYPES",
    "SCHEMA_VERSION",
    "Deduplicator",
    "Event",
    "advance_consumer",
    "cardholder_event",
    "consumer_position",
    "last_id",
    "operator_event",
    "read_after",
    "read_for",
    "write_events",
]

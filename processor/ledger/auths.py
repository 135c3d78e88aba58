"""The auths records: the first answer to every request, keyed by its idempotency key.

The hot path writes them (`apply`, in the same transaction as the hold or posting); a retransmitted request
gets the stored answer back from there. This is the read for everyone else.
"""

from __future__ import annotations

from sqlalchemy import Connection, bindparam, select

from processor.ledger.apply import outcome_from_row
from processor.ledger.interface import StoreInterface
from processor.ledger.models import auths
from processor.ledger.ops import AuthOutcome

_BY_KEY = select(*auths.c).where(auths.c.idem_key == bindparam("idem_key"))


async def find(store: StoreInterface, idem_key: str) -> AuthOutcome | None:
    """The stored first answer to `idem_key` (duplicate=True), or None."""
    return await store.run_query(_find, idem_key)


def _find(conn: Connection, idem_key: str) -> AuthOutcome | None:
    row = conn.execute(_BY_KEY, {"idem_key": idem_key}).first()
    return outcome_from_row(row, duplicate=True) if row is not None else None

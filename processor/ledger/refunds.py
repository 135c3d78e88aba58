"""What a refund may credit: a referenced refund what remains of its purchase, an unreferenced one within
its merchant's limits. Both are decided in the transaction that credits, so no interleaving of engines can
credit more than either bound.

A referenced refund names its purchase (DE 90, or the purchase's RRN in DE 48 `OR`): it may credit what
the purchase paid, less what was reversed and what earlier refunds of it took. Its account row is locked
(PostgreSQL: in `apply_batch`, before anything else), so two refunds of one purchase are counted one after
the other.

An unreferenced refund is money the merchant's word alone sends to a card: it is bounded per transaction
and per UTC day per merchant (`ops.RefundLimits`), counted in `merchant_refunds` with one conditional upsert
(the same statement shape as the card spend totals).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import BigInteger, Connection, Integer, String, bindparam, func, or_, select
from sqlalchemy.orm import Mapped, mapped_column

from processor.ledger import ops
from processor.ledger.models import Base, auths, holds
from processor.ledger.spend import UNLIMITED_COUNT, capped_increment


class MerchantRefunds(Base):
    """A merchant's unreferenced refunds on one UTC day: their total and their number."""

    __tablename__ = "merchant_refunds"

    merchant_id: Mapped[str] = mapped_column(String(15), primary_key=True)
    day: Mapped[str] = mapped_column(String(10), primary_key=True)
    amount_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    count: Mapped[int] = mapped_column(Integer, default=0)


merchant_refunds = MerchantRefunds.__table__

_CLAIM = capped_increment(merchant_refunds, ("merchant_id", "day"), "amount_minor", "count")
_APPROVED = [ops.Result.APPROVED.value, ops.Result.PARTIAL.value]
# The write path's driver takes no IN over a literal list: equalities instead.
_APPROVED_ROW = or_(*(auths.c.result == value for value in _APPROVED))


def _op_is(*names: str) -> Any:
    return or_(*(auths.c.op == name for name in names))


# What later messages took back from a purchase: its refunds (posted or authorized) and its reversal.
_TAKEN_BACK = select(func.coalesce(func.sum(auths.c.approved_minor), 0)).where(
    auths.c.original_auth_id == bindparam("oid"),
    _op_is("credit", "reverse"),
    _APPROVED_ROW,
)
_CAPTURED = select(holds.c.status, holds.c.captured_minor).where(holds.c.id == bindparam("hid"))
_COMPLETIONS = select(func.count()).where(
    auths.c.original_auth_id == bindparam("oid"), auths.c.op == "capture", _APPROVED_ROW
)
_BY_RRN = (
    select(auths.c.ref)
    .where(
        auths.c.terminal_id == bindparam("tid"),
        auths.c.rrn == bindparam("rrn"),
        _op_is("debit", "hold", "capture"),
        _APPROVED_ROW,
    )
    .order_by(auths.c.id.desc())
    .limit(1)
)


def ref_by_rrn(conn: Connection, terminal_id: str, rrn: str) -> str | None:
    """The reference key of the terminal's approved purchase with this RRN, or None."""
    return conn.execute(_BY_RRN, {"tid": terminal_id, "rrn": rrn}).scalar()


def refundable(conn: Connection, orig: Any) -> int:
    """What remains of purchase `orig` (an auths row) to refund: what it paid, less what was taken back."""
    if orig.result not in _APPROVED:
        return 0
    if orig.op in ("debit", "capture"):
        paid = orig.approved_minor
    elif orig.op == "hold" and orig.hold_id is not None:
        hold = conn.execute(_CAPTURED, {"hid": orig.hold_id}).first()
        # An authorization not yet completed paid nothing: it is reversed, not refunded.
        paid = (hold.captured_minor or 0) if hold is not None and hold.status == "captured" else 0
    else:
        return 0
    return max(0, paid - int(conn.execute(_TAKEN_BACK, {"oid": orig.id}).scalar_one()))


def completed(conn: Connection, original_auth_id: int) -> bool:
    """True when an authorized refund was completed already (its credit posted)."""
    return int(conn.execute(_COMPLETIONS, {"oid": original_auth_id}).scalar_one()) > 0


def claim(conn: Connection, merchant_id: str, limits: ops.RefundLimits, amount_minor: int, now: dt.datetime) -> bool:
    """Count an unreferenced refund on the merchant's day; False when a limit would be passed."""
    if amount_minor > limits.per_transaction_minor:
        return False
    dialect = "sqlite" if conn.dialect.name == "sqlite" else "postgresql"
    params = {"k1": merchant_id, "k2": f"{now:%Y-%m-%d}", "amt": amount_minor, "max_amt": limits.daily_minor,
              "max_cnt": UNLIMITED_COUNT}
    return conn.execute(_CLAIM[dialect], params).first() is not None

"""End-of-day batch close (0500 -> 0510): the terminal's totals against the store's.

The terminal sends its batch totals (DE 74/76 counts and DE 86/88 amounts of credits and debits, DE 97
net, DE 60 batch number, DE 50 currency). The store closes the terminal's open batch and counts it by
the rules of `processor.ledger.terminal_batches`; the answer is 00 when both agree and 95 when they do not, and
carries the store's totals in DE 74/76/86/88/97 so the terminal can print them beside its own. The batch
is closed either way. A retransmitted 0500 (same STAN and transmission time) gets the first answer back
and closes nothing more.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from processor import ledger
from processor.auth.context import AuthContext, Declined, Terminal, active_terminal
from processor.iso8583 import MessageFormatError, build_response, rc
from processor.iso8583.currency import alpha_for_numeric
from processor.iso8583.messages import Reconciliation
from processor.ledger import StoreInterface
from processor.ledger.apply import KeySerialReplayed


async def reconcile(
    store: StoreInterface, find_terminal: Callable[[str | None], Awaitable[Terminal | None]], ctx: AuthContext
) -> tuple[dict[str, Any], str]:
    """Answer one 0500: close the terminal's batch and say whether its totals are ours."""
    fields, req = ctx.fields, ctx.request
    try:
        ctx.terminal = active_terminal(await find_terminal(req.terminal_id))
        if not req.stan or not req.transmission_time:
            raise Declined(rc.FORMAT_ERROR, "batch close without STAN (DE 11) and transmission time (DE 7)")
        try:
            close = Reconciliation.from_fields(fields)
        except MessageFormatError as exc:
            raise Declined(rc.FORMAT_ERROR, str(exc)) from None
        currency = alpha_for_numeric(close.currency_numeric)
        if currency is None:
            raise Declined(rc.INVALID_AMOUNT, f"unknown settlement currency {close.currency_numeric}")
    except Declined as declined:
        answer = build_response(fields, declined.code)
        answer["_reason"] = declined.reason
        return answer, declined.code
    try:
        outcome = await ledger.terminal_batches.close(
            store,
            idem_key=req.idempotency_key(),
            terminal_id=req.terminal_id or "",
            batch_number=close.batch_number,
            currency=currency,
            totals=close.totals,
            now=ctx.now,
            ksn_counter=ctx.ksn_counter,
        )
    except KeySerialReplayed as exc:
        answer = build_response(fields, rc.SECURITY_VIOLATION)
        answer["_reason"] = f"{exc}: replayed message"
        return answer, rc.SECURITY_VIOLATION
    extra: dict[str, Any] = {
        "15": outcome.closed_at.strftime("%m%d"),
        "50": close.currency_numeric,
        **outcome.host.fields(),
    }
    if close.batch_number:
        extra["60"] = close.batch_number
    code = rc.APPROVED if outcome.in_balance else rc.RECONCILE_ERROR
    answer = build_response(fields, code, extra=extra)
    if outcome.in_balance:
        reason = f"batch {close.batch_number or '-'} in balance: {outcome.host.describe()}"
    else:
        reason = (
            f"batch {close.batch_number or '-'} out of balance: terminal {close.totals.describe()}; "
            f"ours {outcome.host.describe()}"
        )
    answer["_reason"] = ("duplicate: " if outcome.duplicate else "") + reason
    return answer, code

"""A terminal's batch: what it approved since its last close, and the end-of-day close (0500/0510).

The terminal keeps its own journal, as real terminals do: every approved 0200 purchase or cash (a debit),
0200 refund (a credit) and 0220 completion (a debit) at the amount the issuer approved; a reversal the
engine acknowledged takes its original out of the batch, or down to the amount that remained (DE 95).
As at the issuer, a request is reversed once: a later reversal of it changes nothing.
Pre-authorizations and balance inquiries move no money and are not counted. At the close the terminal
sends its totals; the engine answers 00 (in balance) or 95 (out of balance) with its own totals, and the
batch is closed either way.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from processor.iso8583 import BatchTotals, MessageFormatError

if TYPE_CHECKING:
    from terminal_sim.iso_client import TerminalConnection
    from terminal_sim.pos import PosTerminal

APPROVED = frozenset({"00", "10"})
CLOSE_ATTEMPTS = 3
SETTLEMENT_PROCESSING_CODE = "920000"


@dataclass(frozen=True, slots=True)
class Item:
    """One approved request in the batch: debit or credit, the amount that counts, reversed or not."""

    kind: str
    amount_minor: int
    reversed: bool = False


@dataclass
class TerminalBatch:
    """The open batch: approved items by (STAN, transmission time), and the batch number."""

    number: int = 1
    items: dict[tuple[str, str], Item] = field(default_factory=dict)

    def record(self, request: dict[str, Any], answer: dict[str, Any] | None) -> None:
        """Count one answered request (call it for every answer, reversals included)."""
        if answer is None or str(answer.get("39")) not in APPROVED:
            return
        mti = request.get("t")
        if mti in ("0200", "0220"):
            kind = _kind(request)
            if kind is not None:
                amount = int(answer.get("4") or request.get("4") or 0)
                self.items[(str(request["11"]), str(request["7"]))] = Item(kind, amount)
        elif mti in ("0400", "0420") and request.get("90"):
            de90 = str(request["90"])
            key = (de90[4:10], de90[10:20])
            item = self.items.get(key)
            if item is None or item.reversed:
                return
            remaining = int(str(request["95"])[:12]) if request.get("95") else 0
            self.items[key] = Item(item.kind, min(item.amount_minor, remaining), reversed=True)

    def totals(self) -> BatchTotals:
        credits = [i.amount_minor for i in self.items.values() if i.kind == "credit" and i.amount_minor > 0]
        debits = [i.amount_minor for i in self.items.values() if i.kind == "debit" and i.amount_minor > 0]
        return BatchTotals(len(credits), sum(credits), len(debits), sum(debits))

    def as_state(self) -> dict[str, Any]:
        """What a terminal keeps across restarts."""
        items = [[stan, time, i.kind, i.amount_minor, i.reversed] for (stan, time), i in self.items.items()]
        return {"number": self.number, "items": items}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "TerminalBatch":
        items = {
            (str(stan), str(time)): Item(str(kind), int(amount), bool(reversed_))
            for stan, time, kind, amount, reversed_ in state.get("items", [])
        }
        return cls(number=int(state.get("number", 1)), items=items)


def _kind(request: dict[str, Any]) -> str | None:
    code = str(request.get("3") or "000000")[:2]
    if code == "20":
        return "credit"
    if code in ("00", "01", "09"):
        return "debit"
    return None


@dataclass(frozen=True, slots=True)
class BatchReport:
    """The settlement slip: the terminal's totals, the engine's, and its verdict."""

    terminal_id: str
    batch_number: str
    rc: str | None
    terminal: BatchTotals
    host: BatchTotals | None
    reason: str = ""
    elapsed_ms: float = 0.0  # from sending the 0500 to its answer, retransmissions included

    @property
    def in_balance(self) -> bool:
        return self.rc == "00"

    def as_json(self) -> dict[str, Any]:
        return {
            "terminal_id": self.terminal_id,
            "batch_number": self.batch_number,
            "rc": self.rc,
            "in_balance": self.in_balance,
            "terminal": self.terminal.as_json(),
            "host": self.host.as_json() if self.host is not None else None,
            "reason": self.reason,
            "elapsed_ms": round(self.elapsed_ms, 2),
        }


def reconciliation_request(terminal: "PosTerminal", now: dt.datetime | None = None) -> dict[str, Any]:
    """The 0500 that closes the terminal's batch with its totals."""
    now = now or dt.datetime.now(dt.UTC)
    return {
        "t": "0500",
        "3": SETTLEMENT_PROCESSING_CODE,
        "7": now.strftime("%m%d%H%M%S"),
        "11": terminal.next_stan(),
        "32": terminal.acquirer_id,
        "41": terminal.terminal_id.ljust(8),
        "42": terminal.merchant_id.ljust(15),
        "50": terminal.currency_numeric,
        "60": f"{terminal.batch.number % 1_000_000:06d}",
        **terminal.batch.totals().fields(),
    }


async def close_batch(
    conn: "TerminalConnection",
    terminal: "PosTerminal",
    *,
    timeout_s: float | None = None,
    attempts: int = CLOSE_ATTEMPTS,
    now: dt.datetime | None = None,
) -> BatchReport:
    """Send the 0500 (the same message again when unanswered: the engine closes a batch once per 0500).

    On an answer the terminal starts its next batch, whether the engine found it in balance or not; with
    no answer after every attempt the batch stays open and the report's rc is None.
    """
    from terminal_sim.iso_client import ResponseTimeout

    request = reconciliation_request(terminal, now)
    totals = terminal.batch.totals()
    number = request["60"]
    last: BaseException | None = None
    started = time.perf_counter()
    for _ in range(max(1, attempts)):
        try:
            conn.add_terminal(terminal)
            answer = await conn.request(request, timeout_s=timeout_s)
            break
        except ResponseTimeout as exc:
            last = exc
    else:
        return BatchReport(terminal.terminal_id, number, None, totals, None, f"no answer: {last}",
                           (time.perf_counter() - started) * 1000)
    code = str(answer.get("39", ""))
    host = None
    if code in ("00", "95"):
        try:
            host = BatchTotals.from_fields(answer)
        except MessageFormatError:
            code = f"{code} without totals"
    if host is not None:
        terminal.batch = TerminalBatch(number=terminal.batch.number % 999_999 + 1)
    reason = {"00": "in balance", "95": "out of balance: the engine's totals differ"}.get(code, f"refused ({code})")
    return BatchReport(terminal.terminal_id, number, code, totals, host, reason, (time.perf_counter() - started) * 1000)

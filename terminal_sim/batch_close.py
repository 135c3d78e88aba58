"""The end-of-day batch close (0500/0510): the terminal's totals against the engine's.

The terminal sends the totals of its journal (`journal.TerminalBatch`); the engine answers 00 (in balance)
or 95 (out of balance) with its own totals, and the batch is closed either way.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Any

from processor.iso8583 import BatchTotals, MessageFormatError
from terminal_sim.iso_client import ResponseTimeout, TerminalConnection
from terminal_sim.journal import TerminalBatch
from terminal_sim.pos import PosTerminal

CLOSE_ATTEMPTS = 3
SETTLEMENT_PROCESSING_CODE = "920000"


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


def reconciliation_request(terminal: PosTerminal, now: dt.datetime | None = None) -> dict[str, Any]:
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
    conn: TerminalConnection,
    terminal: PosTerminal,
    *,
    timeout_s: float | None = None,
    attempts: int = CLOSE_ATTEMPTS,
    now: dt.datetime | None = None,
) -> BatchReport:
    """Send the 0500 (the same message again when unanswered: the engine closes a batch once per 0500).

    On an answer the terminal starts its next batch, whether the engine found it in balance or not; with
    no answer after every attempt the batch stays open and the report's rc is None.
    """
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

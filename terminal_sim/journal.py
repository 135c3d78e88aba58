"""A terminal's journal: what it approved since its last batch close (its open batch).

The terminal keeps its own record, as real terminals do: every approved 0200 purchase or cash (a debit),
0200 refund (a credit) and 0220 completion (a debit) at the amount the issuer approved; a reversal the
engine acknowledged takes its original out of the batch, or down to the amount that remained (DE 95).
As at the issuer, a request is reversed once: a later reversal of it changes nothing.
Pre-authorizations and balance inquiries move no money and are not counted. `batch_close` sends the
totals at the end of the day (0500).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from processor.iso8583 import BatchTotals

APPROVED = frozenset({"00", "10"})


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
                self.add(str(request["11"]), str(request["7"]), kind, int(answer.get("4") or request.get("4") or 0))
        elif mti in ("0400", "0420") and request.get("90"):
            de90 = str(request["90"])
            key = (de90[4:10], de90[10:20])
            item = self.items.get(key)
            if item is None or item.reversed:
                return
            remaining = int(str(request["95"])[:12]) if request.get("95") else 0
            self.items[key] = Item(item.kind, min(item.amount_minor, remaining), reversed=True)

    def add(self, stan: str, transmitted: str, kind: str, amount_minor: int) -> None:
        """Count one approved debit or credit by its STAN and DE 7 (what record() does for an approved 0200 or 0220)."""
        self.items[(stan, transmitted)] = Item(kind, amount_minor)

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

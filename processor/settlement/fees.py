"""The fee table: merchant service charge (MSC) and the interchange share of it, by MCC and POS entry mode.

A rule names an MCC (or `*`) and an entry-mode class (`chip`, `contactless`, `magstripe`, `manual`, or `*`),
and gives a percentage in basis points (1 bp = 0.01 %) plus a fixed amount in minor units, for the MSC
and for interchange. The most specific rule wins: MCC and entry mode, then MCC, then entry mode, then
`*`/`*`. Amounts are rounded half up to the minor unit.

- a purchase, cash or completion pays MSC and interchange on its amount;
- a reversal gives back the percentage part on the amount reversed (the fixed part stays: the transaction
  was processed);
- a refund pays no fee and earns no interchange.

On-us the MSC is the merchant's fee and interchange is the issuing side's share of it (the rest is the
acquiring margin); off-us the issuer earns interchange from the network on each presentment.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from processor.errors import InvalidRequest

ENTRY_CLASSES = {
    "05": "chip", "95": "chip",
    "07": "contactless", "91": "contactless",
    "02": "magstripe", "90": "magstripe", "80": "magstripe",
    "01": "manual", "10": "manual", "81": "manual",
}
CLASSES = frozenset({"chip", "contactless", "magstripe", "manual", "*"})


@dataclass(frozen=True, slots=True)
class FeeRule:
    mcc: str
    entry: str
    msc_bps: int
    msc_fixed_minor: int
    interchange_bps: int
    interchange_fixed_minor: int = 0

    def __post_init__(self) -> None:
        if self.entry not in CLASSES:
            raise InvalidRequest(f"fee rule entry {self.entry!r} must be one of {sorted(CLASSES)}")
        if self.mcc != "*" and not (len(self.mcc) == 4 and self.mcc.isdigit()):
            raise InvalidRequest(f"fee rule MCC {self.mcc!r} must be 4 digits or *")
        for name in ("msc_bps", "msc_fixed_minor", "interchange_bps", "interchange_fixed_minor"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0 or value > 10_000_00:
                raise InvalidRequest(f"fee rule {name} must be a whole number from 0, got {value!r}")
        if self.interchange_bps > self.msc_bps or self.interchange_fixed_minor > self.msc_fixed_minor:
            raise InvalidRequest(f"fee rule {self.mcc}/{self.entry}: interchange cannot exceed the service charge")


DEFAULT_RULES: tuple[FeeRule, ...] = (
    FeeRule("*", "*", 150, 10, 20, 0),  # 1.50 % + 0.10; interchange 0.20 % (EU consumer debit cap)
    FeeRule("*", "contactless", 120, 0, 20, 0),
    FeeRule("*", "manual", 220, 20, 30, 0),  # card not present: more risk, more fee
    FeeRule("5411", "*", 90, 5, 20, 0),  # grocery
    FeeRule("5541", "*", 80, 5, 20, 0),  # fuel
    FeeRule("5542", "*", 80, 5, 20, 0),
)


def _round_bps(amount_minor: int, bps: int) -> int:
    return (abs(amount_minor) * bps + 5_000) // 10_000


@dataclass(frozen=True)
class FeeTable:
    rules: tuple[FeeRule, ...] = DEFAULT_RULES
    _index: dict[tuple[str, str], FeeRule] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not any(r.mcc == "*" and r.entry == "*" for r in self.rules):
            raise InvalidRequest("the fee table needs a catch-all rule with mcc * and entry *")
        object.__setattr__(self, "_index", {(r.mcc, r.entry): r for r in self.rules})

    def rule(self, mcc: str, entry_mode: str) -> FeeRule:
        entry = ENTRY_CLASSES.get(entry_mode[:2], "*")
        index = self._index
        for key in ((mcc, entry), (mcc, "*"), ("*", entry), ("*", "*")):
            found = index.get(key)
            if found is not None:
                return found
        raise AssertionError("catch-all rule missing")

    def fees(self, kind: str, amount_minor: int, mcc: str, entry_mode: str) -> tuple[int, int]:
        """(MSC, interchange) in minor units for one item; signed like the item (negative for a reversal)."""
        if kind == "refund" or kind == "refund_reversal" or amount_minor == 0:
            return 0, 0
        r = self.rule(mcc, entry_mode)
        if kind == "reversal":
            return -_round_bps(amount_minor, r.msc_bps), -_round_bps(amount_minor, r.interchange_bps)
        return (
            _round_bps(amount_minor, r.msc_bps) + r.msc_fixed_minor,
            _round_bps(amount_minor, r.interchange_bps) + r.interchange_fixed_minor,
        )

    def to_json(self) -> str:
        return json.dumps([asdict(r) for r in self.rules])

    @classmethod
    def from_json(cls, text: str) -> "FeeTable":
        try:
            data = json.loads(text)
            if not isinstance(data, list):
                raise ValueError("a list of rules")
            return cls(tuple(FeeRule(**rule) for rule in data))
        except InvalidRequest:
            raise
        except (ValueError, TypeError) as exc:
            raise InvalidRequest(
                f"fee table is not valid ({exc}); give a JSON list of rules with mcc, entry, msc_bps, "
                "msc_fixed_minor, interchange_bps, interchange_fixed_minor"
            ) from None

    def as_json(self) -> list[dict[str, Any]]:
        return [asdict(r) for r in self.rules]

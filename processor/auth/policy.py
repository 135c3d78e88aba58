"""Issuer policy the engine applies: hold lifetimes, amount limits, PIN try limit."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

# Merchant categories whose final amount is known only days later keep their holds longer.
HOTEL_MCCS = frozenset({"7011"}) | frozenset(str(m) for m in range(3501, 4000))
CAR_RENTAL_MCCS = frozenset({"7512"}) | frozenset(str(m) for m in range(3351, 3501))
CRUISE_MCCS = frozenset({"4411"})


@dataclass(frozen=True, slots=True)
class Policy:
    """Limits and lifetimes; one object, passed to the engine, so tests can tighten them."""

    hold_expiry_days_default: int = 7
    hold_expiry_days_by_mcc: dict[str, int] = field(
        default_factory=lambda: {**{m: 31 for m in HOTEL_MCCS | CAR_RENTAL_MCCS}, **{m: 31 for m in CRUISE_MCCS}}
    )
    pin_try_limit: int = 3
    amount_max_minor: int = 10_000_000_00  # above this a single card transaction is refused as invalid (13)
    # A chip card swiped because its chip could not be read (DE 22 = 80) is accepted up to this amount; 0
    # refuses every fallback. Skimmed stripes are copied onto cards whose chip does not work.
    fallback_max_minor: int = 250_00

    def hold_expiry_days(self, mcc: str | None) -> int:
        return self.hold_expiry_days_by_mcc.get(mcc or "", self.hold_expiry_days_default)

    def hold_expires_at(self, mcc: str | None, now: dt.datetime) -> dt.datetime:
        return now + dt.timedelta(days=self.hold_expiry_days(mcc))

"""Issuer policy the engine applies: hold lifetimes, amount limits, PIN try limit."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

# Merchant categories whose final amount is known only days later keep their holds longer.
HOTEL_MCCS = frozenset({"7011"}) | frozenset(str(m) for m in range(3501, 4000))
CAR_RENTAL_MCCS = frozenset({"7512"}) | frozenset(str(m) for m in range(3351, 3501))
CRUISE_MCCS = frozenset({"4411"})
# The store's config keys of per-terminal and per-merchant limits (`processor limits set`).
FLOOR_LIMIT_CONFIG = "floor_limit"
REFUND_LIMITS_CONFIG = "refund_limits"
# How far a completion (0220) may go above the authorized amount, in percent, by MCC: a tip on a
# restaurant bill or a taxi fare, the extras of a hotel or car rental. Every other category: 0 %.
# The README's table is this one (tests/engine/test_money_bounds.py checks that they agree).
COMPLETION_TOLERANCE_PCT: dict[str, int] = {
    "5812": 20,  # restaurants
    "5813": 20,  # bars
    "5814": 20,  # fast food
    "4121": 20,  # taxis
    "7230": 20,  # hairdressers
    **{m: 15 for m in HOTEL_MCCS | CAR_RENTAL_MCCS},
}


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
    # A stand-in approval (0120 advice) is honoured up to the terminal's floor limit (config
    # floor_limit.terminal.<DE 41>), else its merchant's (floor_limit.merchant.<DE 42>), else this one.
    advice_floor_limit_minor: int = 100_00
    # A refund that names no purchase: per transaction and per merchant and UTC day (config
    # refund_limits.merchant.<DE 42> = "PER_TRANSACTION,DAILY" in minor units), else these.
    refund_per_transaction_minor: int = 50_00
    refund_daily_minor: int = 200_00
    completion_tolerance_pct: dict[str, int] = field(default_factory=lambda: dict(COMPLETION_TOLERANCE_PCT))

    def hold_expiry_days(self, mcc: str | None) -> int:
        return self.hold_expiry_days_by_mcc.get(mcc or "", self.hold_expiry_days_default)

    def tolerance_pct(self, mcc: str | None) -> int:
        """How far above its authorization a completion at this MCC may go, in percent (0 by default)."""
        return self.completion_tolerance_pct.get(mcc or "", 0)

    def hold_expires_at(self, mcc: str | None, now: dt.datetime) -> dt.datetime:
        return now + dt.timedelta(days=self.hold_expiry_days(mcc))

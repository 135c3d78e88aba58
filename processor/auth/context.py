"""What the checks of one request share: the request's context, the terminal, and the way a check refuses.

Kept apart from `engine` so that the chip checks and the batch close, which the engine calls, need nothing
from the engine itself: the imports of the package point one way (engine -> chip, reconciliation -> context).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from processor.auth.entry_modes import EntryMode
from processor.iso8583 import Request, rc
from processor.issuing.cards import CardRecord
from processor.tokenization.tokens import TokenRecord
from processor.ledger.ops import PinCheck


class Declined(Exception):
    """A check stopped the authorization with this response code."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(slots=True)
class Terminal:
    """What the engine needs of a terminal: who it is and which keys protect its PIN blocks."""

    terminal_id: str
    merchant_id: str
    mcc: str | None
    status: str
    bdk_kcv: str | None
    initial_ksn: str | None
    chip_capable: bool = True
    # The acquiring network (DE 32) whose merchant terminal this is; None for our own terminals.
    network: str | None = None
    # The cache generation read before this row was (processor.ledger.generation); None: not from the cache.
    generation: int | None = None


@dataclass(slots=True)
class AuthContext:
    """Everything known about one request while the checks run."""

    fields: dict[str, Any]
    request: Request
    now: dt.datetime
    terminal: Terminal | None = None
    mode: EntryMode | None = None  # the accepted POS entry mode, once check_entry_mode has run
    card: CardRecord | None = None
    token: TokenRecord | None = None  # the wallet's payment token when DE 2 carries one
    pan: str | None = None
    pin: PinCheck | None = None  # what the HSM said of the PIN block, for the store to count or reset
    ksn_counter: int | None = None  # the DUKPT counter of the request's KSN, claimed in the store
    atc: int | None = None
    icc_response: dict[str, bytes] | None = None
    reason: str = "approved"
    spend: Any = None  # processor.ledger.ops.SpendLimits when the card's controls set daily or monthly limits
    controls: Any = None  # the card's CardControls when read with the card (see controls_read)
    controls_read: bool = False  # True when check_card_known read the controls with the card (None: none set)
    # What the HSM's verify_request already answered with the request's MAC, for `checked_pan`: its fingerprints
    # and the CVVs it verified by (expiry, service code, CVV). A check asks the HSM only for what is not here.
    checked_pan: str | None = None
    fingerprints: list[str] | None = None
    cvv_checks: dict[tuple[str, str, str], bool] | None = None
    # Whether the engine's cached terminal and card rows may serve this request, and the oldest cache
    # generation of those it used (the store applies the request only while that is the current one).
    cached: bool = False
    seen_generation: int | None = None

    def saw(self, generation: int | None) -> None:
        """Note that a cached row of this generation decided part of the request."""
        if generation is not None and (self.seen_generation is None or generation < self.seen_generation):
            self.seen_generation = generation

    def cvv_verified(self, expiry_yymm: str, service_code: str, cvv: str) -> bool | None:
        """What verify_request said of this CVV of this request's PAN, or None when it was not asked."""
        if self.cvv_checks is None or self.checked_pan != self.pan:
            return None
        return self.cvv_checks.get((expiry_yymm, service_code, cvv))


def active_terminal(terminal: Terminal | None) -> Terminal:
    """The terminal when it is registered and active; otherwise Declined(03)."""
    if terminal is None:
        raise Declined(rc.INVALID_MERCHANT, "unknown terminal")
    if terminal.status != "active":
        raise Declined(rc.INVALID_MERCHANT, f"terminal {terminal.status}")
    return terminal

"""Store operations of the authorization hot path, and the answer each one gets.

Every operation is one request answered: the store applies it, records its `auths` row (the first answer,
keyed by `idem_key`) in the same transaction, and returns an `AuthOutcome`. Amounts are minor units of the
ISO 4217 alpha `currency`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

APPROVED = "00"
PARTIAL = "10"
INVALID_TRANSACTION = "12"
INVALID_AMOUNT = "13"
UNKNOWN_ORIGINAL = "25"
INSUFFICIENT_FUNDS = "51"
RESTRICTED = "62"
AMOUNT_LIMIT = "61"
COUNT_LIMIT = "65"


@dataclass(frozen=True, slots=True)
class SpendLimits:
    """A card's daily and monthly limits (None: no limit), counted with the funds in the store."""

    daily_minor: int | None = None
    daily_count: int | None = None
    monthly_minor: int | None = None
    monthly_count: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Op:
    """Fields every operation carries."""

    idem_key: str
    mti: str
    terminal_id: str
    stan: str
    rrn: str
    card_id: int | None
    account_id: int | None
    amount_minor: int
    currency: str
    auth_code: str | None = None
    reason: str = ""
    # When not None, the card's pin_tries is set to this in the same transaction.
    pin_tries: int | None = None
    # When not None (a verified chip cryptogram), the operation is applied only if this ATC is above the
    # card's last one, which it then becomes; otherwise it is declined as a replay ("82").
    atc: int | None = None
    # With `atc`: a wallet token's cryptogram; the ATC is claimed on that payment token, not on the card.
    token_id: int | None = None
    # The card's spending limits: a hold or debit is counted on its day and month, or refused past them.
    spend: SpendLimits | None = None
    # Recorded for settlement: acquirer (DE 32), merchant (DE 42), MCC (DE 18), POS entry mode (DE 22).
    acquirer_id: str = ""
    merchant_id: str = ""
    mcc: str = ""
    entry_mode: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class PlaceHold(Op):
    """0100 authorization (or 0120 advice with force=True): reserve funds until `expires_at`."""

    expires_at: dt.datetime
    partial_ok: bool = False
    force: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Debit(Op):
    """0200 purchase or cash: post at once, account -> clearing."""

    partial_ok: bool = False
    force: bool = False
    kind: str = "purchase"


@dataclass(frozen=True, slots=True, kw_only=True)
class Credit(Op):
    """Refund: clearing -> account."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Capture(Op):
    """0220 completion of the hold placed by `original_key`: post `amount_minor`, release the rest."""

    original_key: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Increment(Op):
    """Incremental authorization: raise the original's active hold by `amount_minor` (the extra).

    The expiry moves to `expires_at`, or by the hold's original validity counted from now when None.
    """

    original_key: str
    partial_ok: bool = False
    expires_at: dt.datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Reverse(Op):
    """0400/0420: undo the original, fully or down to `remaining_minor` (DE 95)."""

    original_key: str
    remaining_minor: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Inquiry(Op):
    """Balance inquiry: records the request and answers the balances."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Decline(Op):
    """A request the engine declined before the store: only its answer (and pin_tries) is recorded."""

    rc: str


AnyOp = PlaceHold | Debit | Credit | Capture | Increment | Reverse | Inquiry | Decline

OP_NAMES: dict[type, str] = {
    PlaceHold: "hold",
    Debit: "debit",
    Credit: "credit",
    Capture: "capture",
    Increment: "increment",
    Reverse: "reverse",
    Inquiry: "inquiry",
    Decline: "decline",
}


@dataclass(frozen=True, slots=True)
class AuthOutcome:
    """The answer to one operation; `duplicate` is True when it is the stored first answer to an earlier one."""

    idem_key: str
    rc: str
    approved_minor: int
    auth_code: str | None
    hold_id: int | None
    card_id: int | None
    account_id: int | None
    ledger_minor: int | None
    available_minor: int | None
    currency: str
    reason: str
    duplicate: bool = False

    @property
    def approved(self) -> bool:
        return self.rc in (APPROVED, PARTIAL)

"""Store operations of the authorization hot path, and the result each one gets.

Every operation is one request answered: the store applies it, records its `auths` row (the first answer,
keyed by `idem_key`) in the same transaction, and returns an `AuthOutcome`. Amounts are minor units of the
ISO 4217 alpha `currency`.

The ledger says what happened as a `Result` ("insufficient funds"); which response code a terminal gets
for it is the engine's decision, handed over with each operation as `answer_codes` and recorded with the
answer so a retransmission gets exactly the first one back.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum


class Result(StrEnum):
    """What the store did with an operation."""

    APPROVED = "approved"
    PARTIAL = "partial"
    INSUFFICIENT_FUNDS = "insufficient_funds"
    ACCOUNT_NOT_OPEN = "account_not_open"
    NO_ACCOUNT = "no_account"
    NOT_A_CARD_ACCOUNT = "not_a_card_account"
    CURRENCY_MISMATCH = "currency_mismatch"
    INVALID_AMOUNT = "invalid_amount"
    UNKNOWN_ORIGINAL = "unknown_original"
    REPLAYED_CRYPTOGRAM = "replayed_cryptogram"
    REPLAYED_KEY_SERIAL = "replayed_key_serial"
    WRONG_PIN = "wrong_pin"
    PIN_TRIES_EXCEEDED = "pin_tries_exceeded"
    AMOUNT_LIMIT = "amount_limit"  # the card's daily or monthly amount limit would be passed
    COUNT_LIMIT = "count_limit"  # the card's daily or monthly number of payments would be passed
    ABOVE_AUTHORIZED = "above_authorized"  # a completion above the authorized amount and its tolerance
    ABOVE_ORIGINAL = "above_original"  # a refund or partial reversal above what remains of its original
    REFUND_LIMIT = "refund_limit"  # an unreferenced refund past its merchant's per-transaction or daily limit
    DECLINED = "declined"  # the engine declined before the store: the answer is the Decline's own code
    # Decided on cached rows that changed since (`Op.seen_generation`): nothing applied, nothing recorded; the
    # engine decides again on fresh rows.
    STALE = "stale"


APPROVALS = frozenset({Result.APPROVED, Result.PARTIAL})


class PinCheck(StrEnum):
    """What the HSM said of the PIN block a request carried."""

    VERIFIED = "verified"
    WRONG = "wrong"


@dataclass(frozen=True, slots=True)
class SpendLimits:
    """A card's daily and monthly limits (None: no limit), counted with the funds in the store."""

    daily_minor: int | None = None
    daily_count: int | None = None
    monthly_minor: int | None = None
    monthly_count: int | None = None


@dataclass(frozen=True, slots=True)
class RefundLimits:
    """What a merchant may refund without naming the purchase: per transaction and per UTC day."""

    per_transaction_minor: int
    daily_minor: int


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
    answer_codes: Mapping[Result, str]  # the response code the engine answers for each result
    auth_code: str | None = None
    reason: str = ""
    # How a completion or reversal finds this request later (DE 90); the idempotency key when None.
    ref: str | None = None
    # A PIN block the HSM verified or refused. WRONG counts a try on the card (pin_tries + 1 in one
    # statement) and the request is declined WRONG_PIN, or PIN_TRIES_EXCEEDED once `pin_try_limit` is
    # reached; VERIFIED sets the count back to zero unless the limit was reached meanwhile (then declined).
    pin: PinCheck | None = None
    pin_try_limit: int = 0
    # When not None, the terminal's DUKPT transaction counter: the operation is applied only if it is above
    # the highest one the terminal used so far, which it then becomes; otherwise REPLAYED_KEY_SERIAL.
    ksn_counter: int | None = None
    # When not None, the cache generation (models.cache_generation) the engine's cached card and terminal rows
    # were read at: the operation is applied only if it is still the current one, else answered STALE.
    seen_generation: int | None = None
    # When not None (a verified chip cryptogram), the operation is applied only if this ATC is above the
    # card's last one, which it then becomes; otherwise REPLAYED_CRYPTOGRAM.
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
    """Refund: clearing -> account, at most what remains of the purchase `original_key` names, or within the
    merchant's `limits` when it names none (refused when it names none and has no limits).

    With post=False (an 0100 refund) the refund is authorized and counted but nothing is credited until
    its completion (0220) names it.
    """

    original_key: str | None = None
    original_rrn: str | None = None  # the purchase's RRN (DE 48 OR), on the same terminal
    limits: RefundLimits | None = None
    post: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class Capture(Op):
    """0220 completion of the hold placed by `original_key`: post `amount_minor`, release the rest.

    At most the hold's amount plus `tolerance_pct` percent (a tip, a restaurant bill); above it the
    completion is refused and the hold left as it was. Completing an authorized refund posts its credit.
    """

    original_key: str
    tolerance_pct: int = 0


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
    """A request the engine declined before the store: its answer (and a wrong PIN's try) is recorded."""

    rc: str
    result: Result = Result.DECLINED


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
    result: Result
    rc: str  # the response code answered, as the engine's answer_codes said when the result was recorded
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
        return self.result in APPROVALS

"""Which response code (DE 39) the engine answers for what the store did.

The checks in `processor.auth.engine` decline with their own code (`Declined(code, reason)`), in the order
of the README's table. Once a request reaches the store, the store says what happened as a typed
`Result` ("insufficient funds") and never chooses a code: `LEDGER_ANSWERS` is that choice, handed to the
store with every operation so that the code is recorded with the first answer and a retransmission gets
exactly the same one back.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from processor.iso8583 import rc
from processor.ledger.ops import Result

LEDGER_ANSWERS: Mapping[Result, str] = MappingProxyType(
    {
        Result.APPROVED: rc.APPROVED,
        Result.PARTIAL: rc.PARTIAL_APPROVAL,
        Result.INSUFFICIENT_FUNDS: rc.INSUFFICIENT_FUNDS,
        # The account behind the card is frozen or closed: the card cannot be used.
        Result.ACCOUNT_NOT_OPEN: rc.RESTRICTED_CARD,
        Result.NO_ACCOUNT: rc.UNKNOWN_CARD,
        Result.NOT_A_CARD_ACCOUNT: rc.INVALID_TRANSACTION,
        Result.CURRENCY_MISMATCH: rc.INVALID_TRANSACTION,
        Result.INVALID_AMOUNT: rc.INVALID_AMOUNT,
        Result.UNKNOWN_ORIGINAL: rc.UNKNOWN_ORIGINAL,
        Result.REPLAYED_CRYPTOGRAM: rc.CVV_FAILURE,
        # A PIN block or MAC under a DUKPT key the terminal already used: someone replays its traffic.
        Result.REPLAYED_KEY_SERIAL: rc.SECURITY_VIOLATION,
        Result.WRONG_PIN: rc.WRONG_PIN,
        Result.PIN_TRIES_EXCEEDED: rc.PIN_TRIES_EXCEEDED,
        # The card's own daily or monthly limits (its holder's spending controls).
        Result.AMOUNT_LIMIT: rc.EXCEEDS_AMOUNT_LIMIT,
        Result.COUNT_LIMIT: rc.EXCEEDS_COUNT_LIMIT,
        # A completion above the authorized amount and its tolerance; a refund or partial reversal above its
        # original: the amount is wrong, nothing moved.
        Result.ABOVE_AUTHORIZED: rc.INVALID_AMOUNT,
        Result.ABOVE_ORIGINAL: rc.INVALID_AMOUNT,
        Result.REFUND_LIMIT: rc.EXCEEDS_AMOUNT_LIMIT,
        # Never used for a Decline: its own code is answered. Listed so that every result has a code.
        Result.DECLINED: rc.SYSTEM_ERROR,
        Result.STALE: rc.SYSTEM_ERROR,  # never answered: the engine decides again
    }
)

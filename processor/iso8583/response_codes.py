"""Response codes (DE 39) in one table: the engine, the README and the terminals all read it from here."""

from __future__ import annotations

APPROVED = "00"
INVALID_MERCHANT = "03"
DO_NOT_HONOUR = "05"
PARTIAL_APPROVAL = "10"
INVALID_TRANSACTION = "12"
INVALID_AMOUNT = "13"
UNKNOWN_CARD = "14"
UNKNOWN_ORIGINAL = "25"
FORMAT_ERROR = "30"
LOST_CARD = "41"
STOLEN_CARD = "43"
INSUFFICIENT_FUNDS = "51"
EXPIRED_CARD = "54"
WRONG_PIN = "55"
NOT_PERMITTED = "57"
NOT_PERMITTED_TERMINAL = "58"
EXCEEDS_AMOUNT_LIMIT = "61"
RESTRICTED_CARD = "62"
SECURITY_VIOLATION = "63"
EXCEEDS_COUNT_LIMIT = "65"
PIN_TRIES_EXCEEDED = "75"
CVV_FAILURE = "82"
ISSUER_INOPERATIVE = "91"
RECONCILE_ERROR = "95"
SYSTEM_ERROR = "96"
CVV2_FAILURE = "N7"

MEANINGS: dict[str, str] = {
    APPROVED: "approved",
    INVALID_MERCHANT: "invalid merchant or terminal",
    DO_NOT_HONOUR: "do not honour (an advice acknowledged but not honoured)",
    PARTIAL_APPROVAL: "partial approval",
    INVALID_TRANSACTION: "invalid transaction",
    INVALID_AMOUNT: "invalid amount or currency",
    UNKNOWN_CARD: "invalid card number",
    UNKNOWN_ORIGINAL: "original not found",
    FORMAT_ERROR: "format error",
    LOST_CARD: "lost card",
    STOLEN_CARD: "stolen card",
    INSUFFICIENT_FUNDS: "insufficient funds",
    EXPIRED_CARD: "expired card",
    WRONG_PIN: "incorrect PIN",
    NOT_PERMITTED: "transaction not permitted to card",
    NOT_PERMITTED_TERMINAL: "transaction not permitted to terminal",
    EXCEEDS_AMOUNT_LIMIT: "exceeds withdrawal amount limit",
    RESTRICTED_CARD: "restricted card",
    SECURITY_VIOLATION: "security violation",
    EXCEEDS_COUNT_LIMIT: "exceeds withdrawal frequency limit",
    PIN_TRIES_EXCEEDED: "PIN tries exceeded",
    CVV_FAILURE: "CVV, iCVV or cryptogram failure",
    ISSUER_INOPERATIVE: "issuer or switch inoperative",
    RECONCILE_ERROR: "reconcile error (totals differ)",
    SYSTEM_ERROR: "system malfunction",
    CVV2_FAILURE: "CVV2 failure",
}

APPROVALS = frozenset({APPROVED, PARTIAL_APPROVAL})


def describe(code: str) -> str:
    """Meaning of a response code, or 'unknown' for one we never send."""
    return MEANINGS.get(code, "unknown")


def markdown_table() -> str:
    """The table as Markdown, for documentation."""
    lines = ["| code | meaning |", "|---|---|"]
    lines += [f"| {code} | {meaning} |" for code, meaning in MEANINGS.items()]
    return "\n".join(lines)

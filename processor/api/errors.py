"""The API's one error shape and the codes a client can branch on.

Every error answer is `{"error": {"code": "...", "message": "...", "details": {...}}}` with the HTTP status
below; `message` is for people and may change, `code` is for programs and does not.
"""

from __future__ import annotations

from typing import Any

# code -> (HTTP status, what it means)
ERROR_CODES: dict[str, tuple[int, str]] = {
    "invalid_request": (400, "the request is malformed or a field is out of range; details.fields names them"),
    "idempotency_key_required": (400, "a write without an Idempotency-Key header"),
    "invalid_cursor": (400, "a pagination cursor this API did not hand out"),
    "unauthenticated": (401, "no bearer token, or an unknown, expired or revoked one"),
    "invalid_credentials": (401, "handle and password do not match"),
    "invalid_refresh_token": (401, "unknown, expired, revoked or already used refresh token"),
    "forbidden": (403, "the credentials are valid but not allowed to do this (e.g. a cardholder on an operator route)"),
    "wrong_pin": (403, "the current PIN given does not verify"),
    "pin_tries_exceeded": (403, "too many wrong PINs: the card's PIN is blocked until an operator resets it"),
    "not_found": (404, "no such object among the caller's own"),
    "recipient_not_found": (404, "no cardholder with that handle, or none with an account in that currency"),
    "idempotency_key_reused": (409, "this Idempotency-Key was used for a different request"),
    "request_in_progress": (409, "the first request with this Idempotency-Key is still being processed; retry"),
    "conflict": (409, "the object changed meanwhile; read it again and retry"),
    "insufficient_funds": (422, "the account does not have the amount available"),
    "account_not_open": (422, "the caller's account is frozen or closed: it can neither send nor receive"),
    "recipient_cannot_receive": (422, "the recipient's account is frozen or closed"),
    "cannot_pay_yourself": (422, "payer and payee are the same cardholder"),
    "currency_mismatch": (422, "the amount's currency is not the account's"),
    "daily_limit_exceeded": (422, "the payment would pass the per-day amount limit for payments to people"),
    "daily_count_exceeded": (422, "the payment would pass the per-day number of payments to people"),
    "request_not_open": (422, "the payment request was already paid, declined, cancelled or expired"),
    "request_expired": (422, "the payment request expired"),
    "card_not_usable": (422, "the card's status does not allow this (e.g. closed, lost or stolen)"),
    "invalid_transition": (422, "the object cannot move to that state from its current one"),
    "too_many_attempts": (429, "too many failed sign-ins; wait for Retry-After seconds"),
    "too_many_streams": (429, "too many open event streams for this cardholder"),
    "service_unavailable": (503, "the store is busy or closing; retry with the same Idempotency-Key"),
    "internal_error": (500, "unexpected failure; nothing was committed unless a retry with the same key says so"),
}


class ApiError(Exception):
    """An answer in the API's error shape; raise it anywhere in a handler or a store body."""

    def __init__(self, code: str, message: str, *, details: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"undocumented API error code {code!r}")
        super().__init__(message)
        self.code = code
        self.status = ERROR_CODES[code][0]
        self.message = message
        self.details = details or {}
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}

"""Idempotency-Key: the first answer to a write is kept with it, so a retry gets that answer and no second effect.

A record is keyed by the caller and the key, and remembers a hash of the request (method, path, body without
secret fields). A key reused for another request is refused (409 idempotency_key_reused). Writes that touch
only the store record their answer in the same transaction as their effect. Writes that need the HSM first
claim the key (state 'pending'), do their work, then record the answer; a retry meanwhile gets 409
request_in_progress, and a claim left behind by a crash is taken over after CLAIM_STALE_AFTER.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, delete, insert, select, update

from processor.api.errors import ApiError
from processor.api.models import idempotency
from processor.ledger.models import utcnow
from processor.ledger.rows import rows_by_pairs

KEY_MAX_CHARS = 255
CLAIM_STALE_AFTER = dt.timedelta(seconds=60)
# Never part of the request hash: a hash of a 4-digit PIN would give the PIN away.
SECRET_FIELDS = frozenset({"pin", "current_pin", "password"})

i = idempotency.c
_FIND = select(i.id, i.request_hash, i.state, i.status_code, i.body, i.created_at).where(
    i.principal == bindparam("p"), i.key == bindparam("k")
)
_INSERT = insert(idempotency)
_FIND_MANY = ("principal", "key", "request_hash", "state", "status_code", "body")


# Built once: json.dumps with options builds a new encoder on each call.
encode = json.JSONEncoder(separators=(",", ":"), default=str).encode
_encode_sorted = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str).encode


@dataclass(frozen=True, slots=True)
class Answer:
    """A write's answer; `replayed` when it is the stored first answer to an earlier request."""

    status: int
    body: dict[str, Any]
    replayed: bool = False
    # The body as JSON, when it was encoded already (for its record): the answer sends these very bytes.
    encoded: str | None = None


def check_key(key: str | None) -> str:
    if key is None or not key.strip():
        raise ApiError("idempotency_key_required", "every write needs an Idempotency-Key header (e.g. a UUID)")
    if len(key) > KEY_MAX_CHARS or not key.isprintable() or not key.isascii():
        raise ApiError("invalid_request", f"Idempotency-Key: at most {KEY_MAX_CHARS} printable ASCII characters")
    return key


def request_hash(method: str, path: str, body: Any) -> str:
    """SHA-256 over the method, the path and the JSON body with secret fields removed."""
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k not in SECRET_FIELDS}
    text = _encode_sorted([method.upper(), path, body])
    return hashlib.sha256(text.encode()).hexdigest()


def stored(conn: Connection, principal: str, key: str, rhash: str, now: dt.datetime | None = None) -> Answer | None:
    """The stored answer for (principal, key), None when there is none (or only a stale claim)."""
    row = conn.execute(_FIND, {"p": principal, "k": key}).first()
    if row is None:
        return None
    if row.request_hash != rhash:
        raise ApiError("idempotency_key_reused", "this Idempotency-Key was already used for a different request")
    if row.state == "pending":
        if (now or utcnow()) - row.created_at > CLAIM_STALE_AFTER:
            return None
        raise ApiError("request_in_progress", "the first request with this Idempotency-Key is still running; retry shortly",
                       headers={"Retry-After": "1"})
    return Answer(row.status_code, json.loads(row.body), replayed=True)


def stored_many(conn: Connection, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], Any]:
    """Rows of several (principal, key) pairs at once (for batches)."""
    if not pairs:
        return {}
    rows = rows_by_pairs(conn, idempotency, _FIND_MANY, ("principal", "key"), pairs)
    return {(r.principal, r.key): r for r in rows}


def answer_from_row(row: Any, rhash: str) -> Answer:
    if row.request_hash != rhash:
        raise ApiError("idempotency_key_reused", "this Idempotency-Key was already used for a different request")
    if row.state == "pending":
        raise ApiError("request_in_progress", "the first request with this Idempotency-Key is still running; retry shortly",
                       headers={"Retry-After": "1"})
    return Answer(row.status_code, json.loads(row.body), replayed=True, encoded=row.body)


def record_row(principal: str, key: str, rhash: str, answer: Answer, now: dt.datetime) -> dict[str, Any]:
    return {
        "principal": principal, "key": key, "request_hash": rhash, "state": "done", "status_code": answer.status,
        "body": answer.encoded or encode(answer.body), "created_at": now,
    }


def record(conn: Connection, principal: str, key: str, rhash: str, answer: Answer) -> None:
    conn.execute(_INSERT, record_row(principal, key, rhash, answer, utcnow()))


def claim(conn: Connection, principal: str, key: str, rhash: str) -> Answer | None:
    """Claim the key for a long write: the stored answer when there is one, else None (claimed)."""
    now = utcnow()
    found = stored(conn, principal, key, rhash, now)
    if found is not None:
        return found
    conn.execute(delete(idempotency).where(i.principal == principal, i.key == key))  # a stale claim, if any
    conn.execute(_INSERT, {"principal": principal, "key": key, "request_hash": rhash, "state": "pending",
                           "status_code": None, "body": None, "created_at": now})
    return None


def complete(conn: Connection, principal: str, key: str, answer: Answer) -> None:
    conn.execute(
        update(idempotency)
        .where(i.principal == principal, i.key == key)
        .values(state="done", status_code=answer.status, body=encode(answer.body))
    )


def release(conn: Connection, principal: str, key: str) -> None:
    """Drop a claim whose work failed unexpectedly, so a retry can run it again."""
    conn.execute(delete(idempotency).where(i.principal == principal, i.key == key, i.state == "pending"))

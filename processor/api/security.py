"""Who is calling: cardholder passwords (argon2id), bearer tokens with refresh, operator keys, sign-in throttling.

Only hashes are kept: argon2id for passwords (slow on purpose, they are guessable), SHA-256 for tokens and
operator keys (32 random bytes each: not guessable, so a fast hash is enough and keeps every request cheap).

Refresh tokens rotate: each use gives a new pair and spends the old one. A spent refresh token presented
again means it was copied, so the whole family (every token of that sign-in) is revoked.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import Connection, bindparam, delete, insert, select, update

from processor.api.errors import ApiError
from processor.api.models import credentials, operators, sign_in_throttle, tokens
from processor.ledger.models import cardholders, utcnow

ACCESS_TTL = dt.timedelta(minutes=15)
REFRESH_TTL = dt.timedelta(days=30)
PASSWORD_MIN_CHARS = 10
PASSWORD_MAX_CHARS = 256
# Sign-in throttling: after this many failures in the window, each further failure locks for longer.
THROTTLE_FREE_FAILURES = 5
THROTTLE_WINDOW = dt.timedelta(minutes=15)
THROTTLE_BASE_LOCK_S = 30
THROTTLE_MAX_LOCK_S = 15 * 60
ACCESS_PREFIX, REFRESH_PREFIX, OPERATOR_PREFIX = "at_", "rt_", "opk_"

# argon2id with OWASP's recommended minimum (19 MiB, 2 passes, 1 lane): tens of milliseconds a sign-in.
_hasher = PasswordHasher(time_cost=2, memory_cost=19_456, parallelism=1)
_DUMMY_HASH = _hasher.hash("not a password of anyone " + secrets.token_hex(8))


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def hash_password(password: str) -> str:
    check_password(password)
    return _hasher.hash(password)


def check_password(password: str) -> None:
    if not PASSWORD_MIN_CHARS <= len(password) <= PASSWORD_MAX_CHARS:
        raise ApiError(
            "invalid_request",
            f"a password has {PASSWORD_MIN_CHARS} to {PASSWORD_MAX_CHARS} characters",
            details={"fields": ["password"]},
        )


def verify_password(stored_hash: str | None, password: str) -> bool:
    """True when `password` matches; an unknown cardholder costs the same time as a wrong password."""
    try:
        return _hasher.verify(stored_hash or _DUMMY_HASH, password) and stored_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller: a cardholder (with their handle) or an operator."""

    role: str  # "cardholder" | "operator"
    id: int
    name: str
    token_family: str | None = None

    @property
    def key(self) -> str:
        """How idempotency records name the caller."""
        return f"{self.role[:2]}:{self.id}"


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in_s: int
    cardholder_id: int
    handle: str

    def as_json(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "refresh_token": self.refresh_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in_s,
            "cardholder_id": self.cardholder_id,
            "handle": self.handle,
        }


# ------------------------------------------------------------------ store bodies (inside a transaction)

ch, cr, tk, th, op = cardholders.c, credentials.c, tokens.c, sign_in_throttle.c, operators.c


def set_password(conn: Connection, cardholder_id: int, password_hash: str) -> None:
    """Set (or replace) a cardholder's password hash; revokes every token they hold."""
    if conn.execute(select(ch.id).where(ch.id == cardholder_id)).first() is None:
        raise ApiError("not_found", f"cardholder {cardholder_id} does not exist")
    now = utcnow()
    if conn.execute(update(credentials).where(cr.cardholder_id == cardholder_id).values(password_hash=password_hash, updated_at=now)).rowcount == 0:
        conn.execute(insert(credentials), {"cardholder_id": cardholder_id, "password_hash": password_hash, "updated_at": now})
    conn.execute(update(tokens).where(tk.cardholder_id == cardholder_id, tk.revoked_at.is_(None)).values(revoked_at=now))


def credential_for(conn: Connection, handle: str) -> tuple[int, str, str | None] | None:
    """(cardholder_id, handle, password_hash) of a handle, or None."""
    row = conn.execute(
        select(ch.id, ch.handle, cr.password_hash).select_from(cardholders.outerjoin(credentials, cr.cardholder_id == ch.id)).where(ch.handle == handle)
    ).first()
    return (row.id, row.handle, row.password_hash) if row is not None else None


def throttle_wait_s(conn: Connection, keys: list[str], now: dt.datetime) -> int:
    """Seconds to wait before another sign-in with any of these throttle keys may be tried (0: go ahead)."""
    rows = conn.execute(select(th.locked_until).where(th.key.in_(keys), th.locked_until.is_not(None)))
    wait = max((int((r.locked_until - now).total_seconds()) + 1 for r in rows if r.locked_until > now), default=0)
    return wait


def record_failure(conn: Connection, keys: list[str], now: dt.datetime) -> None:
    """Count a failed sign-in for each key; past the free failures each one locks for longer (capped)."""
    for key in keys:
        row = conn.execute(select(th.failures, th.first_failure_at).where(th.key == key)).first()
        if row is None or now - row.first_failure_at > THROTTLE_WINDOW:
            failures, first = 1, now
            conn.execute(delete(sign_in_throttle).where(th.key == key))
            conn.execute(insert(sign_in_throttle), {"key": key, "failures": 1, "first_failure_at": now, "locked_until": None})
        else:
            failures, first = row.failures + 1, row.first_failure_at
        locked_until = None
        if failures >= THROTTLE_FREE_FAILURES:
            lock_s = min(THROTTLE_BASE_LOCK_S * 2 ** (failures - THROTTLE_FREE_FAILURES), THROTTLE_MAX_LOCK_S)
            locked_until = now + dt.timedelta(seconds=lock_s)
        conn.execute(update(sign_in_throttle).where(th.key == key).values(failures=failures, first_failure_at=first, locked_until=locked_until))


def clear_failures(conn: Connection, keys: list[str]) -> None:
    conn.execute(delete(sign_in_throttle).where(th.key.in_(keys)))


def issue_tokens(conn: Connection, cardholder_id: int, handle: str, family: str | None = None) -> TokenPair:
    now = utcnow()
    family = family or secrets.token_hex(16)
    access = ACCESS_PREFIX + secrets.token_urlsafe(32)
    refresh = REFRESH_PREFIX + secrets.token_urlsafe(32)
    conn.execute(
        insert(tokens),
        [
            {"token_hash": token_hash(access), "kind": "access", "cardholder_id": cardholder_id, "family": family,
             "expires_at": now + ACCESS_TTL, "used_at": None, "revoked_at": None, "created_at": now},
            {"token_hash": token_hash(refresh), "kind": "refresh", "cardholder_id": cardholder_id, "family": family,
             "expires_at": now + REFRESH_TTL, "used_at": None, "revoked_at": None, "created_at": now},
        ],
    )
    return TokenPair(access, refresh, int(ACCESS_TTL.total_seconds()), cardholder_id, handle)


def refresh_tokens(conn: Connection, refresh_token: str) -> TokenPair | str:
    """A new pair for a live refresh token, spending it; the revoked family name when it was reused."""
    now = utcnow()
    row = conn.execute(
        select(tk.id, tk.cardholder_id, tk.family, tk.expires_at, tk.used_at, tk.revoked_at, ch.handle)
        .join(cardholders, ch.id == tk.cardholder_id)
        .where(tk.token_hash == token_hash(refresh_token), tk.kind == "refresh")
    ).first()
    if row is None or row.revoked_at is not None or row.expires_at <= now:
        raise ApiError("invalid_refresh_token", "refresh token unknown, expired or revoked; sign in again")
    spent = conn.execute(update(tokens).where(tk.id == row.id, tk.used_at.is_(None)).values(used_at=now)).rowcount
    if not spent:
        revoke_family(conn, row.family)
        return row.family
    return issue_tokens(conn, row.cardholder_id, row.handle, family=row.family)


def revoke_family(conn: Connection, family: str) -> None:
    conn.execute(update(tokens).where(tk.family == family, tk.revoked_at.is_(None)).values(revoked_at=utcnow()))


def principal_for_token(conn: Connection, hashed: str, now: dt.datetime) -> tuple[Principal, dt.datetime] | None:
    """The cardholder behind a live access token (and its expiry), or None."""
    row = conn.execute(
        select(tk.cardholder_id, tk.family, tk.expires_at, ch.handle)
        .join(cardholders, ch.id == tk.cardholder_id)
        .where(tk.token_hash == hashed, tk.kind == "access", tk.revoked_at.is_(None), tk.expires_at > now)
    ).first()
    if row is None:
        return None
    return Principal("cardholder", row.cardholder_id, row.handle, row.family), row.expires_at


def live_access_tokens(conn: Connection, hashes: Sequence[str], now: dt.datetime) -> set[str]:
    """Which of these access-token hashes are still live (neither revoked nor expired)."""
    live: set[str] = set()
    for start in range(0, len(hashes), _LIVE_CHUNK):
        live.update(conn.execute(_LIVE_TOKENS, {"hashes": list(hashes[start:start + _LIVE_CHUNK]), "now": now}).scalars())
    return live


_LIVE_CHUNK = 500
_LIVE_TOKENS = select(tk.token_hash).where(
    tk.token_hash.in_(bindparam("hashes", expanding=True)), tk.kind == "access", tk.revoked_at.is_(None), tk.expires_at > bindparam("now"),
)


def principal_for_operator_key(conn: Connection, hashed: str) -> Principal | None:
    row = conn.execute(select(op.id, op.name).where(op.key_hash == hashed, op.status == "active")).first()
    return Principal("operator", row.id, row.name) if row is not None else None


def create_operator(conn: Connection, name: str) -> tuple[int, str]:
    """A new operator key for `name` (replacing and revoking an earlier one); the key is returned once."""
    if not name or len(name) > 64 or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ApiError("invalid_request", "operator name: 1 to 64 letters, digits, '-', '_' or '.'")
    key = OPERATOR_PREFIX + secrets.token_urlsafe(32)
    conn.execute(delete(operators).where(op.name == name))
    operator_id = conn.execute(
        insert(operators).returning(op.id), {"name": name, "key_hash": token_hash(key), "status": "active", "created_at": utcnow()}
    ).scalar_one()
    return operator_id, key


class TokenCache:
    """Who each recently seen access token names (that never changes), bounded in size and age.

    Not whether it is still live: a caller that uses it checks revocation in its own transaction.
    """

    def __init__(self, ttl_s: float = ACCESS_TTL.total_seconds(), max_entries: int = 50_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, Principal, dt.datetime]] = {}

    def get(self, hashed: str, now: dt.datetime) -> Principal | None:
        hit = self._entries.get(hashed)
        if hit is None:
            return None
        seen, principal, expires_at = hit
        if time.monotonic() - seen > self.ttl_s or expires_at <= now:
            self._entries.pop(hashed, None)
            return None
        return principal

    def put(self, hashed: str, principal: Principal, expires_at: dt.datetime) -> None:
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[hashed] = (time.monotonic(), principal, expires_at)

    def forget_family(self, family: str) -> None:
        for key in [k for k, (_, p, _) in self._entries.items() if p.token_family == family]:
            del self._entries[key]

"""Applying a batch of hot-path operations inside one open transaction (Core statements only).

The functions here are synchronous over a SQLAlchemy `Connection`: on SQLite they run in the store's writer
thread on a pysqlite connection, on PostgreSQL through `AsyncConnection.run_sync` on asyncpg. One code path,
two databases. The caller owns the transaction: it begins (SQLite: BEGIN IMMEDIATE), calls `apply_batch`,
commits, and only then hands out the outcomes.

Funds are checked and taken in one conditional UPDATE, so no interleaving of connections or processes can
overdraw an account: `... SET held_minor = held_minor + :amt WHERE ... AND ledger_minor - held_minor >= :amt`.
Internal accounts (funding, clearing) are touched by every posting; their balance changes are summed over
the batch and written once at its end, in account-id order, which keeps their row locks short on PostgreSQL.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import BigInteger, Connection, String, bindparam, column, func, insert, select, text, update

from processor.ledger import ops, refunds, spend
from processor.ledger.models import (
    accounts, auths, cache_generation, cards, holds, journal_entries, payment_tokens, postings, terminals,
)
from processor.ledger.generation import CACHES
from processor.ledger.ops import Result


class LedgerBug(AssertionError):
    """An internal consistency check failed before writing (for example postings that do not balance)."""


class KeySerialReplayed(Exception):
    """A terminal's message under a DUKPT counter it already used: nothing was applied."""


class Conflict(Exception):
    """A row changed under the transaction between two of its statements; the batch is retried."""


@dataclass(slots=True)
class BatchState:
    """What one transaction accumulates while it applies its operations."""

    now: dt.datetime
    internal_ids: dict[tuple[str, str], int]  # committed internal accounts, shared by the store (read only here)
    new_internal_ids: dict[tuple[str, str], int] = field(default_factory=dict)
    internal_delta_minor: defaultdict[int, int] = field(default_factory=lambda: defaultdict(int))
    # Journal entries, their postings and the auths rows are written together (one multi-row INSERT each)
    # at the end of the batch, or before anything reads them back.
    pending_entries: list["PendingEntry"] = field(default_factory=list)
    pending_auths: list[dict[str, Any]] = field(default_factory=list)
    pending_links: list[tuple[int | None, "PendingEntry | None"]] = field(default_factory=list)  # new hold, entry
    hold_auth: list[dict[str, int]] = field(default_factory=list)
    entry_auth: list[dict[str, int]] = field(default_factory=list)
    # Every auths row this batch answered: each becomes the cardholder's feed event in the same transaction.
    answered: list[dict[str, Any]] = field(default_factory=list)


# ------------------------------------------------------------------ statements, built once

_NOT_INTERNAL = accounts.c.kind != "internal"
_BALANCES = (accounts.c.ledger_minor, accounts.c.held_minor)


def _take_stmt(*, hold: bool, checked: bool) -> Any:
    """Reserve (hold) or debit :amt from account :aid; when checked, only if open and :amt is available."""
    if hold:
        values = {"held_minor": accounts.c.held_minor + bindparam("amt")}
    else:
        values = {"ledger_minor": accounts.c.ledger_minor - bindparam("amt")}
    where = [accounts.c.id == bindparam("aid"), accounts.c.currency == bindparam("cur"), _NOT_INTERNAL]
    if checked:
        where += [accounts.c.status == "open", accounts.c.ledger_minor - accounts.c.held_minor >= bindparam("amt")]
    else:
        where.append(accounts.c.status != "closed")
    return update(accounts).where(*where).values(values).returning(*_BALANCES)


_TAKE = {(hold, checked): _take_stmt(hold=hold, checked=checked) for hold in (True, False) for checked in (True, False)}
_ACCOUNT = select(accounts.c.kind, accounts.c.currency, accounts.c.status, *_BALANCES).where(
    accounts.c.id == bindparam("aid")
)
_CREDIT = (
    update(accounts)
    .where(
        accounts.c.id == bindparam("aid"),
        accounts.c.currency == bindparam("cur"),
        _NOT_INTERNAL,
        accounts.c.status != "closed",
    )
    .values(ledger_minor=accounts.c.ledger_minor + bindparam("amt"))
    .returning(*_BALANCES)
)
_ADJUST = (
    update(accounts)
    .where(accounts.c.id == bindparam("aid"))
    .values(
        ledger_minor=accounts.c.ledger_minor + bindparam("d_ledger"),
        held_minor=accounts.c.held_minor + bindparam("d_held"),
    )
    .returning(*_BALANCES, accounts.c.currency)
)
_INTERNAL_DELTA = (
    update(accounts)
    .where(accounts.c.id == bindparam("aid"))
    .values(ledger_minor=accounts.c.ledger_minor + bindparam("d"))
)
_INS_HOLD = insert(holds).returning(holds.c.id)
_INS_HOLDS = insert(holds).returning(holds.c.id, sort_by_parameter_order=True)
_INS_ENTRY = insert(journal_entries).returning(journal_entries.c.id)
_INS_ENTRIES = insert(journal_entries).returning(journal_entries.c.id, sort_by_parameter_order=True)
_INS_POSTINGS = insert(postings)
_INS_AUTHS = insert(auths).returning(auths.c.id, sort_by_parameter_order=True)
_AUTH_COLS = tuple(
    auths.c[name]
    for name in (
        "id", "idem_key", "op", "result", "rc", "approved_minor", "auth_code", "hold_id", "entry_id", "card_id", "account_id",
        "ledger_minor", "available_minor", "currency", "reason", "reversed",
    )
)
# The newest request with that reference: a terminal's STAN comes round again only long after.
_AUTH_BY_REF = select(*_AUTH_COLS).where(auths.c.ref == bindparam("ref")).order_by(auths.c.id.desc()).limit(1)
_AUTHS_BY_KEYS = select(*_AUTH_COLS).where(auths.c.idem_key.in_(bindparam("keys", expanding=True)))
_GENERATION = select(cache_generation.c.generation).where(cache_generation.c.name == CACHES)
_CLAIM_REVERSAL = (
    update(auths)
    .where(auths.c.id == bindparam("oid"), auths.c.reversed.is_(False))
    .values(reversed=True)
    .returning(auths.c.id)
)
_HOLD = select(
    *(
        holds.c[name]
        for name in ("id", "account_id", "card_id", "amount_minor", "currency", "status", "expires_at", "created_at")
    )
).where(holds.c.id == bindparam("hid"))
_CLOSE_HOLD = (
    update(holds)
    .where(holds.c.id == bindparam("hid"), holds.c.status == "active")
    .values(status=bindparam("status"), closed_at=bindparam("at"), captured_minor=bindparam("cap"))
    .returning(holds.c.account_id, holds.c.card_id, holds.c.amount_minor, holds.c.currency)
)
_RESIZE_HOLD = (
    update(holds)
    .where(holds.c.id == bindparam("hid"), holds.c.status == "active")
    .values(amount_minor=holds.c.amount_minor + bindparam("d"), expires_at=bindparam("exp"))
    .returning(holds.c.amount_minor)
)
_SET_HOLD_AUTH = update(holds).where(holds.c.id == bindparam("hid")).values(auth_id=bindparam("auth"))
_SET_ENTRY_AUTH = (
    update(journal_entries).where(journal_entries.c.id == bindparam("eid")).values(auth_id=bindparam("auth"))
)
# PostgreSQL: both links of a batch in one statement, each side from arrays (one executor run, not one per row).
_SET_AUTH_LINKS = text(
    """WITH h AS (
        UPDATE holds SET auth_id = v.auth FROM unnest(CAST(:hids AS BIGINT[]), CAST(:hauths AS BIGINT[])) AS v(id, auth)
        WHERE holds.id = v.id
    )
    UPDATE journal_entries SET auth_id = v.auth
    FROM unnest(CAST(:eids AS BIGINT[]), CAST(:eauths AS BIGINT[])) AS v(id, auth)
    WHERE journal_entries.id = v.id"""
)
# A wrong PIN counts in the statement that reads the count: concurrent guesses, in this process or
# another, can never all see the same count and slip past the limit together.
_COUNT_WRONG_PIN = (
    update(cards)
    .where(cards.c.id == bindparam("cid"))
    .values(pin_tries=cards.c.pin_tries + 1, updated_at=bindparam("at"))
    .returning(cards.c.pin_tries)
)
_RESET_PIN_TRIES = (
    update(cards)
    .where(cards.c.id == bindparam("cid"), cards.c.pin_tries < bindparam("limit"))
    .values(pin_tries=0, updated_at=bindparam("at"))
)
def _forward_only(table: Any, key: str, key_param: str, counter: str, counter_param: str) -> Any:
    """UPDATE that sets a counter column only when the new value is above it (or it is still NULL)."""
    column = table.c[counter]
    return (
        update(table)
        .where(table.c[key] == bindparam(key_param), column.is_(None) | (column < bindparam(counter_param)))
        .values({counter: bindparam(counter_param)})
    )


# Counters that only move forward: a card's and a wallet token's chip ATC.
_CLAIM_ATC = _forward_only(cards, "id", "cid", "last_atc", "atc")
_CLAIM_TOKEN_ATC = _forward_only(payment_tokens, "id", "tid", "last_atc", "atc")
_ORIGINAL_ACCOUNTS = select(auths.c.account_id).where(auths.c.ref.in_(bindparam("refs", expanding=True)))
_LOCK_ACCOUNTS = (
    select(accounts.c.id)
    .where(accounts.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(accounts.c.id)
    .with_for_update(key_share=True)  # FOR NO KEY UPDATE: new rows may still reference the account
)
_LOCKED = (
    select(accounts.c.id)
    .where(accounts.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(accounts.c.id)
    .with_for_update(key_share=True)
    .cte("locked")
)
_LOCK_THEN_AUTHS = select(*_AUTH_COLS).where(
    auths.c.idem_key.in_(bindparam("keys", expanding=True)),
    select(func.count()).select_from(_LOCKED).scalar_subquery() >= 0,
)
# PostgreSQL, `_apply_together`: one statement for many rows, each row named once per statement.
_TAKE_ALL = {
    hold: text(
        f"""UPDATE accounts SET {"held_minor = accounts.held_minor + v.amt" if hold else "ledger_minor = accounts.ledger_minor - v.amt"}
        FROM unnest(CAST(:aids AS BIGINT[]), CAST(:amts AS BIGINT[]), CAST(:curs AS VARCHAR[])) AS v(aid, amt, cur)
        WHERE accounts.id = v.aid AND accounts.currency = v.cur AND accounts.kind != 'internal'
          AND accounts.status = 'open' AND accounts.ledger_minor - accounts.held_minor >= v.amt
        RETURNING accounts.id, accounts.ledger_minor, accounts.held_minor"""
    ).columns(accounts.c.id, accounts.c.ledger_minor, accounts.c.held_minor)
    for hold in (True, False)
}
_INTERNAL = select(accounts.c.id).where(
    accounts.c.kind == "internal", accounts.c.purpose == bindparam("p"), accounts.c.currency == bindparam("cur")
)


# ------------------------------------------------------------------ the batch


def apply_batch(conn: Connection, batch: Sequence[ops.AnyOp], state: BatchState) -> list[ops.AuthOutcome]:
    """Apply `batch` in order inside the caller's transaction; outcomes are valid once it commits.

    An operation decided on cached rows (`seen_generation`) whose generation is no longer the current one
    is answered STALE and not applied: the cache generation is read once per batch, in its transaction.
    """
    if any(op.seen_generation is not None for op in batch):
        current = conn.execute(_GENERATION).scalar_one()
        if any(op.seen_generation not in (None, current) for op in batch):
            live = [op for op in batch if op.seen_generation in (None, current)]
            applied = iter(_apply_batch(conn, live, state) if live else [])
            return [next(applied) if op.seen_generation in (None, current) else _stale(op, current) for op in batch]
    return _apply_batch(conn, batch, state)


def _stale(op: ops.AnyOp, generation: int) -> ops.AuthOutcome:
    return ops.AuthOutcome(
        op.idem_key, Result.STALE, "", 0, None, None, op.card_id, op.account_id, None, None, op.currency,
        f"decided on cached rows older than cache generation {generation}",
    )


def _apply_batch(conn: Connection, batch: Sequence[ops.AnyOp], state: BatchState) -> list[ops.AuthOutcome]:
    original_accounts: set[int] = set()
    if conn.dialect.name == "postgresql":
        # Lock the batch's accounts up front in id order, before any card or terminal row: parallel
        # writers (other engine processes too) then queue in one order instead of deadlocking over an
        # account and the card, terminal or hold rows of its requests. Completions and reversals name only
        # their original; its account is looked up first.
        ids = {op.account_id for op in batch if op.account_id is not None}
        originals = [key for op in batch if (key := getattr(op, "original_key", None))]
        if originals:
            found = conn.execute(_ORIGINAL_ACCOUNTS, {"refs": originals}).scalars()
            original_accounts = {account_id for account_id in found if account_id is not None}
            ids.update(original_accounts)
        keys = list({op.idem_key for op in batch})
        # One round trip for both: the locks (a one-time filter, taken before the read, in id order), then the
        # first answers already recorded. The read's snapshot is from before any wait for a lock: a duplicate
        # another connection commits meanwhile meets the unique idem_key on insert, and the batch is retried.
        stored = {row.idem_key: row for row in conn.execute(_LOCK_THEN_AUTHS, {"ids": sorted(ids), "keys": keys})}
    else:
        keys = list({op.idem_key for op in batch})
        stored = {row.idem_key: row for row in conn.execute(_AUTHS_BY_KEYS, {"keys": keys})}
    fast: dict[int, ops.Decline | tuple[Take, int | None]] = {}
    if conn.dialect.name == "postgresql" and len(batch) > 1:
        fast = _apply_together(conn, state, batch, stored, original_accounts)
    answered: dict[str, ops.AuthOutcome] = {}
    outcomes: list[ops.AuthOutcome] = []
    for op in batch:
        first = answered.get(op.idem_key)
        if first is not None:
            outcomes.append(dataclasses.replace(first, duplicate=True))
            continue
        row = stored.get(op.idem_key)
        if row is not None:
            outcomes.append(outcome_from_row(row, duplicate=True))
            continue
        done = fast.get(id(op))
        if done is None:
            op = _claim_counters(conn, state, op)
            outcome = _HANDLERS[type(op)](conn, state, op)
        elif isinstance(done, ops.Decline):
            outcome = _decline(conn, state, done)
        else:
            outcome = _record_take(conn, state, op, *done)  # type: ignore[arg-type]
        answered[op.idem_key] = outcome
        outcomes.append(outcome)
    _finish(conn, state)
    return outcomes


def _together_ok(op: ops.AnyOp) -> bool:
    """A hold or debit whose only steps are the terminal's DUKPT counter and the funds (see `_apply_together`)."""
    return (
        type(op) in (ops.PlaceHold, ops.Debit)
        and op.account_id is not None
        and op.amount_minor > 0
        and op.pin is None
        and op.atc is None
        and (op.spend is None or op.card_id is None)
        and not op.force  # type: ignore[union-attr]
    )


def _apply_together(
    conn: Connection, state: BatchState, batch: Sequence[ops.AnyOp], stored: dict[str, Any], original_accounts: set[int]
) -> dict[int, ops.Decline | tuple[Take, int | None]]:
    """PostgreSQL: claim the DUKPT counters and take the funds of the batch's plain holds and debits a few
    statements at a time instead of two round trips each.

    An operation goes this way only when no other kind of operation in the batch touches its account or its
    terminal, so moving it ahead of those changes nothing. Operations on one account or one terminal keep
    their order: the n-th of each goes in the n-th round, and a round's rows are all different. A funds
    check that fails in a round is explained at once the usual way (`take_funds`, which also gives a
    partial approval), before the next round. Returns, by `id(op)`, the Decline a refused counter turned
    it into, or its Take and new hold id, for the batch loop to record in order.
    """
    seen: set[str] = set()
    candidates: list[ops.AnyOp] = []
    busy_accounts, busy_terminals = set(original_accounts), set()
    for op in batch:
        if op.idem_key in seen or op.idem_key in stored:
            continue
        seen.add(op.idem_key)
        if _together_ok(op):
            candidates.append(op)
        else:
            busy_accounts.add(op.account_id)
            busy_terminals.add(op.terminal_id)
    # Left to the batch loop, an operation makes its account and terminal busy for the others too.
    changed = True
    while changed:
        changed = False
        kept = []
        for op in candidates:
            claims = op.ksn_counter is not None and bool(op.terminal_id)
            if op.account_id in busy_accounts or (claims and op.terminal_id in busy_terminals):
                busy_accounts.add(op.account_id)
                busy_terminals.add(op.terminal_id)
                changed = True
            else:
                kept.append(op)
        candidates = kept
    rounds: list[list[ops.AnyOp]] = []
    next_round: dict[Any, int] = {}
    for op in candidates:
        terminal = ("t", op.terminal_id) if op.ksn_counter is not None and op.terminal_id else None
        account = ("a", op.account_id)
        n = max(next_round.get(account, 0), next_round.get(terminal, 0) if terminal else 0)
        next_round[account] = n + 1
        if terminal:
            next_round[terminal] = n + 1
        if n == len(rounds):
            rounds.append([])
        rounds[n].append(op)
    if sum(len(r) for r in rounds) < 2:
        return {}
    done: dict[int, ops.Decline | tuple[Take, int | None]] = {}
    for ops_in_round in rounds:
        # (in terminal order, like the accounts in id order: two batches meet their rows in one order)
        claims = sorted((op for op in ops_in_round if op.ksn_counter is not None and op.terminal_id), key=lambda o: o.terminal_id)
        claimed: set[str] = set()
        if claims:
            params = {"tids": [op.terminal_id for op in claims], "counters": [op.ksn_counter for op in claims]}
            claimed = set(conn.execute(_CLAIM_KSNS, params).scalars())
        takes = []
        for op in ops_in_round:
            if op.ksn_counter is not None and op.terminal_id and op.terminal_id not in claimed:
                reason = f"DUKPT counter {op.ksn_counter} used before or below the terminal's window: replayed key serial number"
                done[id(op)] = _declined(op, Result.REPLAYED_KEY_SERIAL, reason)
            else:
                takes.append(op)
        for hold in (True, False):
            mine = [op for op in takes if isinstance(op, ops.PlaceHold) == hold]
            if not mine:
                continue
            params = {
                "aids": [op.account_id for op in mine],
                "amts": [op.amount_minor for op in mine],
                "curs": [op.currency for op in mine],
            }
            balances = {row.id: (row.ledger_minor, row.held_minor) for row in conn.execute(_TAKE_ALL[hold], params)}
            for op in mine:
                assert op.account_id is not None
                after = balances.get(op.account_id)
                if after is not None:
                    done[id(op)] = (Take(Result.APPROVED, "approved", op.amount_minor, after), None)
                else:  # why not, or how much: the usual way, on this account alone
                    take = take_funds(
                        conn, op.account_id, op.amount_minor, op.currency, hold=hold,
                        partial_ok=op.partial_ok, force=False,  # type: ignore[union-attr]
                    )
                    done[id(op)] = (take, None)
    new_holds = [
        op for op in candidates
        if isinstance(op, ops.PlaceHold) and isinstance(d := done.get(id(op)), tuple) and d[0].result in ops.APPROVALS
    ]
    if new_holds:
        rows = [_hold_row(state, op, done[id(op)][0].approved_minor) for op in new_holds]  # type: ignore[index]
        hold_ids = conn.execute(_INS_HOLDS, rows).scalars().all()
        if len(hold_ids) != len(rows):
            raise LedgerBug(f"{len(rows)} holds written but {len(hold_ids)} ids returned")
        for op, hold_id in zip(new_holds, hold_ids, strict=True):
            done[id(op)] = (done[id(op)][0], hold_id)  # type: ignore[index]
    return done


def _record_take(
    conn: Connection, state: BatchState, op: ops.PlaceHold | ops.Debit, take: "Take", hold_id: int | None
) -> ops.AuthOutcome:
    """Record a hold or debit whose funds `_apply_together` took (and whose hold it wrote)."""
    if isinstance(op, ops.PlaceHold):
        return _record(
            conn, state, op, take.result, take.reason, approved_minor=take.approved_minor, balances=take.balances,
            hold_id=hold_id, new_hold=True,
        )
    return _debit_recorded(conn, state, op, take)


def _hold_row(state: BatchState, op: ops.PlaceHold, amount_minor: int) -> dict[str, Any]:
    return {
        "account_id": op.account_id,
        "card_id": op.card_id,
        "auth_id": None,
        "amount_minor": amount_minor,
        "currency": op.currency,
        "status": "active",
        "forced": op.force,
        "expires_at": op.expires_at,
        "created_at": state.now,
        "closed_at": None,
        "captured_minor": None,
    }


def _claim_counters(conn: Connection, state: BatchState, op: ops.AnyOp) -> ops.AnyOp:
    """Count a PIN try, claim the terminal's DUKPT counter and the card's ATC; a refused claim declines the op."""
    if op.ksn_counter is not None and op.terminal_id:
        if not claim_ksn_counter(conn, op.terminal_id, op.ksn_counter):
            reason = f"DUKPT counter {op.ksn_counter} used before or below the terminal's window: replayed key serial number"
            return _declined(op, Result.REPLAYED_KEY_SERIAL, reason)
    if op.pin is not None and op.card_id is not None:
        params = {"cid": op.card_id, "at": state.now, "limit": op.pin_try_limit}
        if op.pin is ops.PinCheck.WRONG:
            tries = conn.execute(_COUNT_WRONG_PIN, params).scalar_one()
            if tries >= op.pin_try_limit:
                return _declined(op, Result.PIN_TRIES_EXCEEDED, f"wrong PIN, {tries} wrong tries: PIN blocked")
            return _declined(op, Result.WRONG_PIN, f"wrong PIN ({tries} of {op.pin_try_limit} tries)")
        if conn.execute(_RESET_PIN_TRIES, params).rowcount != 1 and not isinstance(op, ops.Decline):
            return _declined(op, Result.PIN_TRIES_EXCEEDED, "PIN try limit reached by another request meanwhile")
    chip_counter = op.token_id is not None or op.card_id is not None
    if op.atc is not None and not isinstance(op, ops.Decline) and chip_counter:
        # A wallet token's cryptogram counts on the token's own ATC; a card's chip on the card's.
        if op.token_id is not None:
            claim, params, owner = _CLAIM_TOKEN_ATC, {"tid": op.token_id, "atc": op.atc}, "token"
        else:
            claim, params, owner = _CLAIM_ATC, {"cid": op.card_id, "atc": op.atc}, "card"
        if conn.execute(claim, params).rowcount != 1:
            return _declined(op, Result.REPLAYED_CRYPTOGRAM, f"ATC {op.atc} is not above the {owner}'s last ATC: replayed cryptogram")
    return op


# A terminal's DUKPT counters: each is accepted once. `ksn_counter` is the highest accepted, and bit i of
# `ksn_window` says whether `ksn_counter - i` was used. A terminal that pipelines its requests numbers them
# in order, but they are answered concurrently (and by several engines), so they may reach the store out of
# order: a counter below the highest that was never used, and is within the window, is still accepted
# once. A counter used before, or older than the window, is a replay. One statement, so two engines can
# never both accept one counter. (A NULL window on a terminal that has a counter: everything below used.)
KSN_WINDOW = 62
_WINDOW_MASK = (1 << KSN_WINDOW) - 1


def _ksn_claim_clauses(c: str, cast_int: str, cast_big: str) -> tuple[str, str]:
    """(SET, WHERE) of the window claim of counter expression `c` on a `terminals` row."""
    w, m = KSN_WINDOW, _WINDOW_MASK
    counter, window = "terminals.ksn_counter", f"COALESCE(terminals.ksn_window, {m}{cast_big})"
    below = f"(1{cast_big} << ({counter} - {c}){cast_int})"
    sets = f"""ksn_counter = CASE WHEN {counter} IS NULL OR {c} > {counter} THEN {c} ELSE {counter} END,
            ksn_window = CASE
                WHEN {counter} IS NULL OR {c} - {counter} >= {w} THEN 1{cast_big}
                WHEN {c} > {counter} THEN (({window} << ({c} - {counter}){cast_int}) | 1) & {m}{cast_big}
                ELSE {window} | {below}
            END"""
    where = f"""({counter} IS NULL OR {c} > {counter}
            OR ({counter} - {c} < {w} AND ({window} & {below}) = 0))"""
    return sets, where


def _claim_ksn_sql(cast_int: str, cast_big: str) -> Any:
    sets, where = _ksn_claim_clauses(":counter", cast_int, cast_big)
    return text(f"UPDATE terminals SET {sets} WHERE terminals.terminal_id = :tid AND {where}").bindparams(
        bindparam("counter", type_=BigInteger), bindparam("tid", type_=String)
    )


_CLAIM_KSN = {"sqlite": _claim_ksn_sql("", ""), "postgresql": _claim_ksn_sql("::int", "::bigint")}
# The same claim for many terminals at once (each named once per statement); see `claim_ksn_counter`.
_KSNS_SET, _KSNS_WHERE = _ksn_claim_clauses("v.counter", "::int", "::bigint")
_CLAIM_KSNS = text(
    f"""UPDATE terminals SET {_KSNS_SET}
    FROM unnest(CAST(:tids AS VARCHAR[]), CAST(:counters AS BIGINT[])) AS v(tid, counter)
    WHERE terminals.terminal_id = v.tid AND {_KSNS_WHERE}
    RETURNING terminals.terminal_id"""
).columns(terminals.c.terminal_id)


def claim_ksn_counter(conn: Connection, terminal_id: str, counter: int) -> bool:
    """Accept DUKPT counter `counter` of the terminal once (see KSN_WINDOW); False when it is a replay."""
    dialect = "sqlite" if conn.dialect.name == "sqlite" else "postgresql"
    return conn.execute(_CLAIM_KSN[dialect], {"tid": terminal_id, "counter": counter}).rowcount == 1


def _declined(op: ops.AnyOp, result: Result, reason: str) -> ops.Decline:
    common = {f.name: getattr(op, f.name) for f in dataclasses.fields(ops.Op)}
    common.update(reason=reason, pin=None, ksn_counter=None, atc=None)
    return ops.Decline(**common, rc="", result=result)


def flush_pending(conn: Connection, state: BatchState) -> None:
    """Insert the batch's pending journal entries, postings and auths rows; link new holds and entries."""
    if state.pending_entries:
        entry_ids = conn.execute(
            _INS_ENTRIES,
            [
                {
                    "kind": entry.kind,
                    "reference": entry.reference[:200],
                    "auth_id": None,
                    "forced": entry.forced,
                    "created_at": state.now,
                }
                for entry in state.pending_entries
            ],
        ).scalars().all()
        if len(entry_ids) != len(state.pending_entries):
            raise LedgerBug(f"{len(state.pending_entries)} journal entries written but {len(entry_ids)} ids returned")
        for entry, entry_id in zip(state.pending_entries, entry_ids, strict=True):
            entry.id = entry_id
        conn.execute(
            _INS_POSTINGS,
            [
                {"entry_id": entry.id, "account_id": account_id, "amount_minor": amount, "currency": entry.currency}
                for entry in state.pending_entries
                for account_id, amount in entry.lines
            ],
        )
        state.pending_entries.clear()
    if not state.pending_auths:
        return
    for values in state.pending_auths:
        if isinstance(values["entry_id"], PendingEntry):
            values["entry_id"] = values["entry_id"].id
    auth_ids = conn.execute(_INS_AUTHS, state.pending_auths).scalars().all()
    if len(auth_ids) != len(state.pending_auths):
        raise LedgerBug(f"{len(state.pending_auths)} auths rows written but {len(auth_ids)} ids returned")
    for auth_id, (hold_id, entry) in zip(auth_ids, state.pending_links, strict=True):
        if hold_id is not None:
            state.hold_auth.append({"hid": hold_id, "auth": auth_id})
        if entry is not None:
            state.entry_auth.append({"eid": entry.id, "auth": auth_id})
    state.pending_auths.clear()
    state.pending_links.clear()


def _pg_type(column: Any) -> str:
    from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect

    return asyncpg_dialect.dialect().type_compiler_instance.process(column.type)


_FLUSH_ALL_SQL: dict[tuple[str, ...], Any] = {}


def _flush_all_statement(auth_columns: tuple[str, ...]) -> Any:
    """PostgreSQL: the batch's journal entries, their postings, its auths rows and the links between them
    (entry <-> auth, hold -> auth) in one statement. Ids come from the tables' sequences first, in order,
    so that every row can name the others as it is inserted (a statement's parts cannot see each other's
    rows, so none could be updated afterwards)."""
    found = _FLUSH_ALL_SQL.get(auth_columns)
    if found is not None:
        return found
    a_cols = ", ".join(auth_columns)
    a_arrays = ", ".join(f"CAST(:a_{name} AS {_pg_type(auths.c[name])}[])" for name in auth_columns)
    sql = f"""WITH an AS MATERIALIZED (
        SELECT nextval(pg_get_serial_sequence('auths', 'id')) AS id, ord FROM generate_series(1, :n_auths) AS ord
    ), en AS MATERIALIZED (
        SELECT nextval(pg_get_serial_sequence('journal_entries', 'id')) AS id, ord
        FROM generate_series(1, :n_entries) AS ord
    ), e AS (
        INSERT INTO journal_entries (id, kind, reference, auth_id, forced, created_at)
        SELECT en.id, v.kind, v.reference, an.id, v.forced, v.created_at
        FROM unnest(CAST(:e_kind AS VARCHAR[]), CAST(:e_reference AS VARCHAR[]), CAST(:e_forced AS BOOLEAN[]),
                    CAST(:e_created_at AS TIMESTAMP WITH TIME ZONE[]), CAST(:e_auth AS BIGINT[]))
             WITH ORDINALITY AS v(kind, reference, forced, created_at, aord, ord)
        JOIN en ON en.ord = v.ord LEFT JOIN an ON an.ord = v.aord
    ), p AS (
        INSERT INTO postings (entry_id, account_id, amount_minor, currency)
        SELECT en.id, v.account_id, v.amount_minor, v.currency
        FROM unnest(CAST(:p_entry AS BIGINT[]), CAST(:p_account_id AS BIGINT[]), CAST(:p_amount_minor AS BIGINT[]),
                    CAST(:p_currency AS VARCHAR[])) AS v(eord, account_id, amount_minor, currency)
        JOIN en ON en.ord = v.eord
    ), a AS (
        INSERT INTO auths (id, {a_cols}, entry_id)
        SELECT an.id, {", ".join(f"v.{name}" for name in auth_columns)}, en.id
        FROM unnest({a_arrays}, CAST(:a_entry AS BIGINT[])) WITH ORDINALITY AS v({a_cols}, eord, ord)
        JOIN an ON an.ord = v.ord LEFT JOIN en ON en.ord = v.eord
        ORDER BY v.ord
        RETURNING auths.id
    ), h AS (
        UPDATE holds SET auth_id = an.id
        FROM unnest(CAST(:h_id AS BIGINT[]), CAST(:h_auth AS BIGINT[])) AS v(hid, aord) JOIN an ON an.ord = v.aord
        WHERE holds.id = v.hid
    )
    SELECT count(*) FROM a"""
    found = _FLUSH_ALL_SQL[auth_columns] = text(sql).columns(column("count", BigInteger))
    return found


def _flush_all_together(conn: Connection, state: BatchState) -> bool:
    """PostgreSQL, the batch's last flush: `_flush_all_statement` when every auths row's entry is one of the
    entries being flushed (the hot path); False, having written nothing, otherwise."""
    entries, rows, links = state.pending_entries, state.pending_auths, state.pending_links
    if not rows or state.hold_auth or state.entry_auth:
        return False
    entry_ord = {id(entry): i for i, entry in enumerate(entries, 1)}
    for values in rows:
        entry = values["entry_id"]
        if entry is not None and (not isinstance(entry, PendingEntry) or id(entry) not in entry_ord):
            return False
    columns = tuple(name for name in rows[0] if name != "entry_id")
    entry_auth: list[int | None] = [None] * len(entries)
    hold_ids, hold_auths = [], []
    for auth_ord, (hold_id, entry) in enumerate(links, 1):
        if entry is not None:
            entry_auth[entry_ord[id(entry)] - 1] = auth_ord
        if hold_id is not None:
            hold_ids.append(hold_id)
            hold_auths.append(auth_ord)
    params: dict[str, Any] = {
        "n_auths": len(rows),
        "n_entries": len(entries),
        "e_kind": [entry.kind for entry in entries],
        "e_reference": [entry.reference[:200] for entry in entries],
        "e_forced": [entry.forced for entry in entries],
        "e_created_at": [state.now] * len(entries),
        "e_auth": entry_auth,
        "p_entry": [i for i, entry in enumerate(entries, 1) for _ in entry.lines],
        "p_account_id": [account_id for entry in entries for account_id, _ in entry.lines],
        "p_amount_minor": [amount for entry in entries for _, amount in entry.lines],
        "p_currency": [entry.currency for entry in entries for _ in entry.lines],
        "a_entry": [entry_ord[id(v["entry_id"])] if v["entry_id"] is not None else None for v in rows],
        "h_id": hold_ids,
        "h_auth": hold_auths,
    }
    for name in columns:
        params[f"a_{name}"] = [values[name] for values in rows]
    written = conn.execute(_flush_all_statement(columns), params).scalar_one()
    if written != len(rows):
        raise LedgerBug(f"{len(rows)} auths rows to write but {written} written")
    entries.clear()
    rows.clear()
    links.clear()
    return True


def _finish(conn: Connection, state: BatchState) -> None:
    if not (conn.dialect.name == "postgresql" and _flush_all_together(conn, state)):
        flush_pending(conn, state)
    if conn.dialect.name == "postgresql":
        if state.hold_auth or state.entry_auth:
            conn.execute(_SET_AUTH_LINKS, {
                "hids": [link["hid"] for link in state.hold_auth], "hauths": [link["auth"] for link in state.hold_auth],
                "eids": [link["eid"] for link in state.entry_auth], "eauths": [link["auth"] for link in state.entry_auth],
            })
    else:
        if state.hold_auth:
            conn.execute(_SET_HOLD_AUTH, state.hold_auth)
        if state.entry_auth:
            conn.execute(_SET_ENTRY_AUTH, state.entry_auth)
    if state.answered:
        from processor.ledger.outbox import card_events, write_events

        # (no RELEASE of the outbox's savepoint: only the internal accounts' update follows, and it commits
        # with the rest)
        write_events(conn, card_events(conn, state.answered, state.now), release=False)
    if state.internal_delta_minor:
        # Last before the commit: every batch of every writer updates these few rows, so their row locks
        # are held for the commit's round trip only, and parallel writers overlap everything before it.
        deltas = sorted(state.internal_delta_minor.items())
        params = [{"aid": account_id, "d": delta} for account_id, delta in deltas if delta]
        if params:
            conn.execute(_INTERNAL_DELTA, params)


def outcome_from_row(row: Any, *, duplicate: bool) -> ops.AuthOutcome:
    return ops.AuthOutcome(
        idem_key=row.idem_key,
        result=Result(row.result),
        rc=row.rc,
        approved_minor=row.approved_minor,
        auth_code=row.auth_code,
        hold_id=row.hold_id,
        card_id=row.card_id,
        account_id=row.account_id,
        ledger_minor=row.ledger_minor,
        available_minor=row.available_minor,
        currency=row.currency,
        reason=row.reason,
        duplicate=duplicate,
    )


# ------------------------------------------------------------------ building blocks


def _record(
    conn: Connection,
    state: BatchState,
    op: ops.AnyOp,
    result: Result,
    reason: str,
    *,
    approved_minor: int = 0,
    balances: tuple[int, int] | None = None,
    hold_id: int | None = None,
    new_hold: bool = False,
    entry: "PendingEntry | None" = None,
    original_auth_id: int | None = None,
    account_id: int | None = None,
    card_id: int | None = None,
    currency: str | None = None,
) -> ops.AuthOutcome:
    """Queue the auths row (the first answer) for this transaction and return it as the outcome."""
    approved = result in ops.APPROVALS
    rc = op.rc if isinstance(op, ops.Decline) and result is Result.DECLINED else op.answer_codes[result]
    ledger_minor, available_minor = (balances[0], balances[0] - balances[1]) if balances else (None, None)
    account_id = account_id if account_id is not None else op.account_id
    card_id = card_id if card_id is not None else op.card_id
    currency = currency or op.currency
    auth_code = op.auth_code if approved else None
    state.pending_auths.append(
        {
            "idem_key": op.idem_key,
            "ref": op.ref or op.idem_key,
            "op": ops.OP_NAMES[type(op)],
            "mti": op.mti,
            "terminal_id": op.terminal_id,
            "stan": op.stan,
            "rrn": op.rrn,
            "card_id": card_id,
            "account_id": account_id,
            "amount_minor": op.amount_minor,
            "currency": currency,
            "result": result.value,
            "rc": rc,
            "approved_minor": approved_minor,
            "auth_code": auth_code,
            "reason": reason[:200],
            "hold_id": hold_id,
            "entry_id": entry,  # resolved to the entry's id when the batch is flushed
            "original_auth_id": original_auth_id,
            "reversed": False,
            "ledger_minor": ledger_minor,
            "available_minor": available_minor,
            "acquirer_id": op.acquirer_id[:11],
            "merchant_id": op.merchant_id[:15],
            "mcc": op.mcc[:4],
            "entry_mode": op.entry_mode[:2],
            "created_at": state.now,
        }
    )
    state.answered.append(state.pending_auths[-1])
    state.pending_links.append((hold_id if new_hold else None, entry))
    return ops.AuthOutcome(
        idem_key=op.idem_key,
        result=result,
        rc=rc,
        approved_minor=approved_minor,
        auth_code=auth_code,
        hold_id=hold_id,
        card_id=card_id,
        account_id=account_id,
        ledger_minor=ledger_minor,
        available_minor=available_minor,
        currency=currency,
        reason=reason[:200],
    )


def internal_account(conn: Connection, state: BatchState, purpose: str, currency: str) -> int:
    """The internal account of `purpose` in `currency`, created in this transaction when missing."""
    key = (purpose, currency)
    found = state.internal_ids.get(key) or state.new_internal_ids.get(key)
    if found is not None:
        return found
    found = conn.execute(_INTERNAL, {"p": purpose, "cur": currency}).scalar()
    if found is None:
        found = insert_account(conn, None, "internal", purpose, currency, state.now)
    state.new_internal_ids[key] = found
    return found


def insert_account(
    conn: Connection, cardholder_id: int | None, kind: str, purpose: str | None, currency: str, now: dt.datetime
) -> int:
    """A new open account with nothing on it; its id."""
    return conn.execute(
        insert(accounts).returning(accounts.c.id),
        {
            "cardholder_id": cardholder_id,
            "kind": kind,
            "purpose": purpose,
            "currency": currency,
            "status": "open",
            "ledger_minor": 0,
            "held_minor": 0,
            "created_at": now,
        },
    ).scalar_one()


@dataclass(slots=True)
class PendingEntry:
    """A balanced journal entry; on the hot path it waits for the batch's multi-row INSERT, which sets `id`."""

    kind: str
    reference: str
    lines: list[tuple[int, int]]
    currency: str
    forced: bool
    id: int | None = None

    @classmethod
    def balanced(
        cls, kind: str, reference: str, lines: Sequence[tuple[int, int]], currency: str, forced: bool
    ) -> "PendingEntry":
        """The entry, once its postings are seen to sum to zero (LedgerBug otherwise: nothing is written)."""
        if sum(amount for _, amount in lines) != 0:
            raise LedgerBug(f"journal entry {kind!r} ({reference}) does not balance in {currency}: {list(lines)}")
        return cls(kind, reference, list(lines), currency, forced)


def post_entry(
    conn: Connection,
    state: BatchState,
    kind: str,
    reference: str,
    lines: Sequence[tuple[int, int]],
    currency: str,
    *,
    forced: bool = False,
) -> int:
    """Insert one balanced journal entry now; balances of the accounts are the caller's job."""
    entry = PendingEntry.balanced(kind, reference, lines, currency, forced)
    entry_id = conn.execute(
        _INS_ENTRY,
        {"kind": kind, "reference": reference[:200], "auth_id": None, "forced": forced, "created_at": state.now},
    ).scalar_one()
    conn.execute(
        _INS_POSTINGS,
        [
            {"entry_id": entry_id, "account_id": account_id, "amount_minor": amount, "currency": currency}
            for account_id, amount in entry.lines
        ],
    )
    return entry_id


def defer_entry(
    state: BatchState, kind: str, reference: str, lines: Sequence[tuple[int, int]], currency: str, *, forced: bool = False
) -> PendingEntry:
    """Queue one balanced journal entry for the batch's INSERT; balances of the accounts are the caller's job."""
    entry = PendingEntry.balanced(kind, reference, lines, currency, forced)
    state.pending_entries.append(entry)
    return entry


@dataclass(slots=True)
class Take:
    result: Result
    reason: str
    approved_minor: int = 0
    balances: tuple[int, int] | None = None  # (ledger_minor, held_minor) after the operation


def _customer_account(conn: Connection, account_id: int, currency: str) -> tuple[Take | None, Any]:
    """The account's row, and a refusal when it is missing, internal or in another currency."""
    row = conn.execute(_ACCOUNT, {"aid": account_id}).first()
    if row is None:
        return Take(Result.NO_ACCOUNT, f"account {account_id} does not exist"), None
    if row.kind == "internal":
        return Take(Result.NOT_A_CARD_ACCOUNT, f"account {account_id} is internal"), row
    if row.currency != currency:
        return Take(Result.CURRENCY_MISMATCH, f"currency {currency} differs from account currency {row.currency}"), row
    return None, row


def _why_not(conn: Connection, account_id: int, currency: str) -> tuple[Take | None, Any]:
    """Explain a failed conditional update: a decline, or None with the row when only funds were short."""
    refused, row = _customer_account(conn, account_id, currency)
    if refused is not None:
        return refused, row
    if row.status != "open":
        return Take(Result.ACCOUNT_NOT_OPEN, f"account {row.status}", balances=(row.ledger_minor, row.held_minor)), row
    return None, row


def take_funds(
    conn: Connection, account_id: int, amount_minor: int, currency: str, *, hold: bool, partial_ok: bool, force: bool
) -> Take:
    """Hold (or debit) `amount_minor` if available, else what is available when partial_ok; force skips the check."""
    params = {"aid": account_id, "cur": currency, "amt": amount_minor}
    row = conn.execute(_TAKE[(hold, not force)], params).first()
    if row is not None:
        return Take(Result.APPROVED, "advice" if force else "approved", amount_minor, (row.ledger_minor, row.held_minor))
    for _ in range(3):  # the available amount can move between our statements on PostgreSQL
        decline, acct = _why_not(conn, account_id, currency)
        if decline is not None:
            return decline
        available = acct.ledger_minor - acct.held_minor
        if force or not partial_ok or available <= 0:
            return Take(Result.INSUFFICIENT_FUNDS, "insufficient funds", 0, (acct.ledger_minor, acct.held_minor))
        params["amt"] = min(available, amount_minor)
        row = conn.execute(_TAKE[(hold, True)], params).first()
        if row is not None:
            return Take(Result.PARTIAL, "partial approval", params["amt"], (row.ledger_minor, row.held_minor))
    return Take(Result.INSUFFICIENT_FUNDS, "insufficient funds (balance changing)", 0, None)


def _bad_amount(conn: Connection, state: BatchState, op: ops.AnyOp, *, zero_ok: bool = False) -> ops.AuthOutcome | None:
    if op.amount_minor < 0 or (op.amount_minor == 0 and not zero_ok):
        return _record(conn, state, op, Result.INVALID_AMOUNT, f"amount {op.amount_minor} must be positive")
    if op.account_id is None and not isinstance(op, (ops.Capture, ops.Reverse)):
        return _record(conn, state, op, Result.NO_ACCOUNT, "no account for this card")
    return None


def _find_original(conn: Connection, state: BatchState, ref: str) -> Any:
    flush_pending(conn, state)  # the original may have been answered earlier in this batch
    return conn.execute(_AUTH_BY_REF, {"ref": ref}).first()


# ------------------------------------------------------------------ operations


def _over_limit(conn: Connection, state: BatchState, op: ops.PlaceHold | ops.Debit) -> ops.AuthOutcome | None:
    """Count the request on the card's day and month totals; its refusal when a limit would be passed."""
    if op.spend is None or op.card_id is None or op.force:
        return None
    if conn.dialect.name == "postgresql":
        # Accounts before spend totals, in every transaction: the order that keeps two batches from deadlocking.
        conn.execute(_LOCK_ACCOUNTS, {"ids": [op.account_id]})
    refusal = spend.claim(conn, op.card_id, op.spend, op.amount_minor, state.now)
    if refusal is None:
        return None
    what = "amount" if refusal is Result.AMOUNT_LIMIT else "number of payments"
    return _record(conn, state, op, refusal, f"card's daily or monthly {what} limit reached")


def _settle_limit(conn: Connection, state: BatchState, op: ops.PlaceHold | ops.Debit, take: "Take") -> None:
    """Give back what was counted but not approved (funds refused, or a partial approval)."""
    if op.spend is None or op.card_id is None or op.force:
        return
    if take.result not in ops.APPROVALS:
        spend.give_back_all(conn, op.card_id, op.spend, op.amount_minor, 1, state.now)
    elif take.approved_minor < op.amount_minor:
        spend.give_back_all(conn, op.card_id, op.spend, op.amount_minor - take.approved_minor, 0, state.now)


def _place_hold(conn: Connection, state: BatchState, op: ops.PlaceHold) -> ops.AuthOutcome:
    if (bad := _bad_amount(conn, state, op)) is not None:
        return bad
    assert op.account_id is not None
    if (limited := _over_limit(conn, state, op)) is not None:
        return limited
    take = take_funds(
        conn, op.account_id, op.amount_minor, op.currency, hold=True, partial_ok=op.partial_ok, force=op.force
    )
    _settle_limit(conn, state, op, take)
    hold_id = None
    if take.result in ops.APPROVALS:
        hold_id = conn.execute(_INS_HOLD, _hold_row(state, op, take.approved_minor)).scalar_one()
    return _record(
        conn, state, op, take.result, take.reason, approved_minor=take.approved_minor, balances=take.balances,
        hold_id=hold_id, new_hold=True,
    )


def _debit(conn: Connection, state: BatchState, op: ops.Debit) -> ops.AuthOutcome:
    if (bad := _bad_amount(conn, state, op)) is not None:
        return bad
    assert op.account_id is not None
    if (limited := _over_limit(conn, state, op)) is not None:
        return limited
    take = take_funds(
        conn, op.account_id, op.amount_minor, op.currency, hold=False, partial_ok=op.partial_ok, force=op.force
    )
    _settle_limit(conn, state, op, take)
    return _debit_recorded(conn, state, op, take)


def _debit_recorded(conn: Connection, state: BatchState, op: ops.Debit, take: "Take") -> ops.AuthOutcome:
    entry = None
    if take.result in ops.APPROVALS:
        clearing = internal_account(conn, state, "clearing", op.currency)
        entry = defer_entry(
            state, op.kind, op.idem_key, [(op.account_id, -take.approved_minor), (clearing, take.approved_minor)],
            op.currency, forced=op.force,
        )
        state.internal_delta_minor[clearing] += take.approved_minor
    return _record(
        conn, state, op, take.result, take.reason, approved_minor=take.approved_minor, balances=take.balances,
        entry=entry,
    )


def _credit(conn: Connection, state: BatchState, op: ops.Credit) -> ops.AuthOutcome:
    if (bad := _bad_amount(conn, state, op)) is not None:
        return bad
    assert op.account_id is not None
    decline, acct = _creditable(conn, op.account_id, op.currency)
    if decline is not None:
        return _record(conn, state, op, decline.result, decline.reason, balances=decline.balances)
    common: dict[str, Any] = {}
    ref = op.original_key
    if ref is None and op.original_rrn:
        ref = refunds.ref_by_rrn(conn, op.terminal_id, op.original_rrn)
        if ref is None:
            return _record(conn, state, op, Result.UNKNOWN_ORIGINAL, f"no approved purchase with RRN {op.original_rrn} here")
    if ref is not None:
        orig = _find_original(conn, state, ref)
        if orig is None or orig.account_id != op.account_id:
            return _record(conn, state, op, Result.UNKNOWN_ORIGINAL, "the purchase it refunds is not this card's")
        common["original_auth_id"] = orig.id
        left = refunds.refundable(conn, orig)
        if op.amount_minor > left:
            reason = f"refund of {op.amount_minor} above the {left} that remains of its purchase"
            return _record(conn, state, op, Result.ABOVE_ORIGINAL, reason, **common)
    elif op.limits is None or not refunds.claim(conn, op.merchant_id, op.limits, op.amount_minor, state.now):
        reason = "refund without its purchase above the merchant's per-transaction or daily limit"
        return _record(conn, state, op, Result.REFUND_LIMIT, reason)
    if not op.post:
        # An authorization of a refund: counted against its bounds now, credited by its completion.
        return _record(
            conn, state, op, Result.APPROVED, "refund authorized: credited on completion", approved_minor=op.amount_minor,
            balances=(acct.ledger_minor, acct.held_minor), **common,
        )
    return _post_refund(conn, state, op, op.account_id, op.amount_minor, **common)


def _creditable(conn: Connection, account_id: int, currency: str) -> tuple[Take | None, Any]:
    """A refund may reach any customer account in its currency that is not closed (a frozen one too)."""
    refused, row = _customer_account(conn, account_id, currency)
    if refused is not None:
        return refused, row
    if row.status == "closed":
        return Take(Result.ACCOUNT_NOT_OPEN, "account closed", balances=(row.ledger_minor, row.held_minor)), row
    return None, row


def _post_refund(
    conn: Connection, state: BatchState, op: ops.Credit | ops.Capture, credited: int, amount_minor: int, **common: Any
) -> ops.AuthOutcome:
    """Credit `amount_minor` from clearing to account `credited` (checked by the caller in this transaction)."""
    account_id = credited
    row = conn.execute(_CREDIT, {"aid": account_id, "cur": op.currency, "amt": amount_minor}).first()
    if row is None:
        raise Conflict(f"account {account_id} closed while a refund was credited")
    clearing = internal_account(conn, state, "clearing", op.currency)
    entry = defer_entry(
        state, "refund", op.idem_key, [(clearing, -amount_minor), (account_id, amount_minor)], op.currency
    )
    state.internal_delta_minor[clearing] -= amount_minor
    return _record(
        conn, state, op, Result.APPROVED, "refund", approved_minor=amount_minor,
        balances=(row.ledger_minor, row.held_minor), entry=entry, **common,
    )


def _complete_refund(conn: Connection, state: BatchState, op: ops.Capture, orig: Any) -> ops.AuthOutcome:
    """0220 naming an authorized refund: credit at most what was authorized, once."""
    common: dict[str, Any] = {"original_auth_id": orig.id, "account_id": orig.account_id, "card_id": orig.card_id}
    if op.currency != orig.currency:
        return _record(conn, state, op, Result.CURRENCY_MISMATCH, f"currency {op.currency} differs from the refund's", **common)
    if op.amount_minor > orig.approved_minor:
        reason = f"completion {op.amount_minor} above the {orig.approved_minor} refund authorized"
        return _record(conn, state, op, Result.ABOVE_AUTHORIZED, reason, **common)
    if orig.reversed or refunds.completed(conn, orig.id):
        return _record(conn, state, op, Result.UNKNOWN_ORIGINAL, "refund already completed or reversed", **common)
    decline, _ = _creditable(conn, orig.account_id, op.currency)
    if decline is not None:
        return _record(conn, state, op, decline.result, decline.reason, balances=decline.balances, **common)
    if op.amount_minor == 0:
        return _record(conn, state, op, Result.APPROVED, "refund completed with zero: nothing credited", **common)
    return _post_refund(conn, state, op, orig.account_id, op.amount_minor, **common)


def _approved_original(
    conn: Connection, state: BatchState, op: ops.Capture | ops.Increment
) -> tuple[Any, ops.AuthOutcome | None]:
    orig = _find_original(conn, state, op.original_key)
    if orig is None or orig.hold_id is None or orig.result not in ops.APPROVALS:
        reason = "no approved authorization with a hold for the original"
        return None, _record(conn, state, op, Result.UNKNOWN_ORIGINAL, reason)
    return orig, None


def _capture(conn: Connection, state: BatchState, op: ops.Capture) -> ops.AuthOutcome:
    if op.amount_minor < 0:
        return _record(conn, state, op, Result.INVALID_AMOUNT, f"amount {op.amount_minor} must not be negative")
    refund = _find_original(conn, state, op.original_key)
    if refund is not None and refund.op == "credit" and refund.entry_id is None and refund.result in ops.APPROVALS:
        return _complete_refund(conn, state, op, refund)
    orig, declined = _approved_original(conn, state, op)
    if declined is not None:
        return declined
    hold = conn.execute(_HOLD, {"hid": orig.hold_id}).first()
    if op.currency != hold.currency:
        reason = f"currency {op.currency} differs from the hold's {hold.currency}"
        return _record(conn, state, op, Result.CURRENCY_MISMATCH, reason)
    ceiling = hold.amount_minor + hold.amount_minor * op.tolerance_pct // 100
    if hold.status == "active" and op.amount_minor > ceiling:
        # Above what the cardholder authorized (and the category's tolerance): refused, the hold untouched.
        reason = f"completion {op.amount_minor} above the authorized {hold.amount_minor} and its {op.tolerance_pct}% tolerance"
        return _record(
            conn, state, op, Result.ABOVE_AUTHORIZED, reason, original_auth_id=orig.id, hold_id=hold.id,
            account_id=hold.account_id,
        )
    extra = op.amount_minor - hold.amount_minor
    if extra > 0 and hold.status == "active":
        # A completion above the authorized amount: the hold grows to it first (the network guarantees the
        # completion, so no funds check), which keeps captured_minor <= amount_minor for every hold.
        if conn.execute(_RESIZE_HOLD, {"hid": hold.id, "d": extra, "exp": hold.expires_at}).first() is not None:
            conn.execute(_ADJUST, {"aid": hold.account_id, "d_ledger": 0, "d_held": extra})
    closed = conn.execute(
        _CLOSE_HOLD,
        {
            "hid": hold.id,
            "status": "captured" if op.amount_minor else "released",
            "at": state.now,
            "cap": op.amount_minor,
        },
    ).first()
    if closed is None:
        return _record(
            conn, state, op, Result.UNKNOWN_ORIGINAL, f"hold {hold.id} is already {hold.status}",
            original_auth_id=orig.id, hold_id=hold.id, account_id=hold.account_id,
        )
    acct = conn.execute(
        _ADJUST, {"aid": closed.account_id, "d_ledger": -op.amount_minor, "d_held": -closed.amount_minor}
    ).one()
    entry = None
    if op.amount_minor:
        clearing = internal_account(conn, state, "clearing", closed.currency)
        entry = defer_entry(
            state, "capture", op.idem_key, [(closed.account_id, -op.amount_minor), (clearing, op.amount_minor)],
            closed.currency, forced=acct.ledger_minor - acct.held_minor < 0,
        )
        state.internal_delta_minor[clearing] += op.amount_minor
    return _record(
        conn, state, op, Result.APPROVED, "completion posted" if op.amount_minor else "completion of zero: hold released",
        approved_minor=op.amount_minor, balances=(acct.ledger_minor, acct.held_minor), hold_id=hold.id,
        entry=entry, original_auth_id=orig.id, account_id=closed.account_id,
        card_id=op.card_id if op.card_id is not None else closed.card_id,
    )


def _increment(conn: Connection, state: BatchState, op: ops.Increment) -> ops.AuthOutcome:
    if op.amount_minor <= 0:
        return _record(conn, state, op, Result.INVALID_AMOUNT, f"amount {op.amount_minor} must be positive")
    orig, declined = _approved_original(conn, state, op)
    if declined is not None:
        return declined
    hold = conn.execute(_HOLD, {"hid": orig.hold_id}).first()
    common = {"original_auth_id": orig.id, "hold_id": hold.id, "account_id": hold.account_id}
    if hold.status != "active":
        return _record(conn, state, op, Result.UNKNOWN_ORIGINAL, f"hold {hold.id} is already {hold.status}", **common)
    if op.currency != hold.currency:
        reason = f"currency {op.currency} differs from the hold's {hold.currency}"
        return _record(conn, state, op, Result.CURRENCY_MISMATCH, reason, **common)
    take = take_funds(
        conn, hold.account_id, op.amount_minor, hold.currency, hold=True, partial_ok=op.partial_ok, force=False
    )
    if take.result in ops.APPROVALS:
        expires_at = op.expires_at or state.now + (hold.expires_at - hold.created_at)
        expires_at = max(expires_at, hold.expires_at)
        if conn.execute(_RESIZE_HOLD, {"hid": hold.id, "d": take.approved_minor, "exp": expires_at}).first() is None:
            raise Conflict(f"hold {hold.id} closed while it was being incremented")
    return _record(
        conn, state, op, take.result, take.reason, approved_minor=take.approved_minor, balances=take.balances, **common
    )


def _reverse(conn: Connection, state: BatchState, op: ops.Reverse) -> ops.AuthOutcome:
    orig = _find_original(conn, state, op.original_key)
    if orig is None:
        return _record(conn, state, op, Result.UNKNOWN_ORIGINAL, "original not found")
    common: dict[str, Any] = {"original_auth_id": orig.id, "account_id": orig.account_id, "currency": orig.currency}
    if orig.op in ("reverse", "inquiry", "decline") or orig.result not in ops.APPROVALS:
        return _record(conn, state, op, Result.APPROVED, f"original {orig.op} {orig.result}: nothing to reverse", **common)
    if op.remaining_minor is not None and not orig.reversed:
        original_minor = orig.approved_minor
        if orig.op == "hold" and orig.hold_id is not None:
            hold = conn.execute(_HOLD, {"hid": orig.hold_id}).first()
            if hold is not None and hold.status == "active":
                original_minor = hold.amount_minor  # increments included
        if op.remaining_minor > original_minor:
            # A replacement amount above the original would add money: refused before the original is
            # claimed, so it stays as it was and can still be reversed.
            reason = f"replacement amount {op.remaining_minor} (DE 95) above the original {original_minor}"
            return _record(conn, state, op, Result.ABOVE_ORIGINAL, reason, **common)
    if conn.execute(_CLAIM_REVERSAL, {"oid": orig.id}).first() is None:
        return _record(conn, state, op, Result.APPROVED, "already reversed", **common)
    remaining = max(0, op.remaining_minor or 0)
    if orig.op in ("hold", "increment"):
        return _reverse_hold(conn, state, op, orig, remaining, common)
    undo = max(0, orig.approved_minor - remaining)
    if not undo or orig.entry_id is None:
        return _record(conn, state, op, Result.APPROVED, "nothing left to reverse", **common)
    sign = -1 if orig.op == "credit" else 1  # reversing a refund takes the money back
    acct = conn.execute(_ADJUST, {"aid": orig.account_id, "d_ledger": sign * undo, "d_held": 0}).one()
    clearing = internal_account(conn, state, "clearing", acct.currency)
    entry = defer_entry(
        state, "reversal", op.idem_key, [(orig.account_id, sign * undo), (clearing, -sign * undo)], acct.currency,
        forced=acct.ledger_minor - acct.held_minor < 0,
    )
    state.internal_delta_minor[clearing] -= sign * undo
    return _record(
        conn, state, op, Result.APPROVED, "reversed", approved_minor=undo, balances=(acct.ledger_minor, acct.held_minor),
        entry=entry, **common,
    )


def _reverse_hold(
    conn: Connection, state: BatchState, op: ops.Reverse, orig: Any, remaining: int, common: dict[str, Any]
) -> ops.AuthOutcome:
    hold = conn.execute(_HOLD, {"hid": orig.hold_id}).first()
    common["hold_id"] = hold.id
    if hold.status != "active":
        reason = f"hold {hold.id} already {hold.status}: nothing to release"
        return _record(conn, state, op, Result.APPROVED, reason, **common)
    if orig.op == "hold":
        release = max(0, hold.amount_minor - remaining)
    else:
        release = min(hold.amount_minor, max(0, orig.approved_minor - remaining))
    if release == 0:
        return _record(conn, state, op, Result.APPROVED, "nothing to release", **common)
    if release == hold.amount_minor:
        done = conn.execute(_CLOSE_HOLD, {"hid": hold.id, "status": "released", "at": state.now, "cap": None}).first()
    else:
        done = conn.execute(_RESIZE_HOLD, {"hid": hold.id, "d": -release, "exp": hold.expires_at}).first()
    if done is None:
        raise Conflict(f"hold {hold.id} closed while it was being reversed")
    acct = conn.execute(_ADJUST, {"aid": hold.account_id, "d_ledger": 0, "d_held": -release}).one()
    return _record(
        conn, state, op, Result.APPROVED, "hold released" if release == hold.amount_minor else "hold reduced",
        approved_minor=release, balances=(acct.ledger_minor, acct.held_minor), **common,
    )


def _inquiry(conn: Connection, state: BatchState, op: ops.Inquiry) -> ops.AuthOutcome:
    if op.account_id is None:
        return _record(conn, state, op, Result.NO_ACCOUNT, "no account for this card")
    decline, acct = _why_not(conn, op.account_id, op.currency)
    if decline is not None:
        return _record(conn, state, op, decline.result, decline.reason, balances=decline.balances)
    return _record(conn, state, op, Result.APPROVED, "balance inquiry", balances=(acct.ledger_minor, acct.held_minor))


def _decline(conn: Connection, state: BatchState, op: ops.Decline) -> ops.AuthOutcome:
    return _record(conn, state, op, op.result, op.reason or f"declined {op.rc}")


_HANDLERS: dict[type, Any] = {
    ops.PlaceHold: _place_hold,
    ops.Debit: _debit,
    ops.Credit: _credit,
    ops.Capture: _capture,
    ops.Increment: _increment,
    ops.Reverse: _reverse,
    ops.Inquiry: _inquiry,
    ops.Decline: _decline,
}

__all__ = ["BatchState", "claim_ksn_counter", "Conflict", "KeySerialReplayed", "LedgerBug", "apply_batch", "defer_entry", "internal_account", "post_entry"]

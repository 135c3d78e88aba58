"""Ingesting a network's clearing file: match each first presentment to its authorization, post it, release
the hold, and list what a person must look at.

Matching: the authorization with the presentment's approval code (DE 38), RRN (DE 37) and card (the HSM's
keyed fingerprint of DE 2). Then, per presentment:

| case | what happens | exception |
|---|---|---|
| matched, hold active, amount within tolerance | posted, hold captured | - |
| matched, amount above the authorization beyond tolerance | posted (forced), hold captured | `amount_over_tolerance` |
| no authorization (no approval code, or none matches) | posted (forced) | `no_authorization` |
| matched, but the hold had expired or was released | posted (forced) | `late_presentment` |
| the same record again, or its authorization already presented | not posted | `duplicate_presentment` |
| card closed | posted (forced) unless the account is closed | `closed_card` |
| card unknown, or in another currency than its account | not posted | `unmatched_presentment` |

A refund presentment (DE 3 `20`) credits the cardholder; it needs no authorization.

The file is checked whole first (record numbers, trailer count and control sum); then it is ingested in
chunks, each one transaction (presentment rows, journal entries, account balances, hold captures,
settlement items, exceptions). A file id that was ingested completely is not ingested again: nothing
changes. A run killed half-way resumes at the first record not yet in (presentments are unique by file
and record number). Presentments belong to the business day in which they are ingested (their capture),
and settle with the network in that day's run.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, bindparam, func, insert, select, update

from hsm_sim import MAX_PAN_FINGERPRINTS, HsmApi
from processor.errors import InvalidRequest
from processor.iso8583.clearing import ClearingFileError, Presentment, read_presentments, scan_clearing_file
from processor.iso8583.currency import alpha_for_numeric
from processor.ledger import StoreInterface
from processor.ledger.apply import BatchState, internal_account
from processor.ledger.models import accounts, auths, cards, holds, journal_entries, postings, utcnow
from processor.settlement.bulk import ITEM_COLUMNS, allocate_ids, insert_rows, refresh_statistics, update_rows
from processor.settlement.config import SettlementConfig
from processor.settlement.models import (
    clearing_files,
    presentments,
    settlement_days,
    settlement_exceptions,
    settlement_items,
)

CHUNK = 5000
PRESENTMENT_COLUMNS = (
    "clearing_file_id", "seq", "record_checksum", "status", "auth_id", "card_id", "amount_minor", "currency", "auth_code", "rrn",
    "arn", "merchant_id", "pan_last4", "business_date", "entry_id", "reason",
)
a, au, c, h, cf, pr = accounts.c, auths.c, cards.c, holds.c, clearing_files.c, presentments.c


@dataclass(frozen=True, slots=True)
class Record:
    seq: int
    p: Presentment
    checksum: str
    fingerprints: tuple[str, ...]


def _ingest_day(conn: Connection, today: dt.date) -> str:
    """The first business day from `today` on that is not settled."""
    day = today
    while conn.execute(select(settlement_days.c.state).where(settlement_days.c.business_date == day.isoformat())).scalar() == "settled":
        day += dt.timedelta(days=1)
    return day.isoformat()


def begin_file(conn: Connection, header: Any, today: dt.date) -> dict[str, Any]:
    row = conn.execute(select(clearing_files).where(cf.file_id == header.file_id)).first()
    if row is not None:
        if row.sha256 != header.sha256:
            raise InvalidRequest(
                f"clearing file {header.file_id} was ingested before with other content; ask the network for a new file id"
            )
        return {"id": row.id, "status": row.status, "business_date": row.business_date}
    key = _ingest_day(conn, today)
    file_row_id = conn.execute(
        insert(clearing_files).returning(cf.id),
        {"file_id": header.file_id, "network": header.network, "sha256": header.sha256, "records": header.count,
         "control_sum_minor": header.control_sum, "status": "ingesting", "business_date": key, "ingested_at": utcnow()},
    ).scalar_one()
    return {"id": file_row_id, "status": "ingesting", "business_date": key}


def _done_seqs(conn: Connection, file_row_id: int, low: int, high: int) -> set[int]:
    return set(conn.execute(
        select(pr.seq).where(pr.clearing_file_id == file_row_id, pr.seq >= low, pr.seq <= high)
    ).scalars())


def _in_list(values: list[Any]) -> list[Any]:
    """The values, padded with their last one to the next power of two, for an IN list.

    The drivers keep a prepared statement per SQL text, and an IN list of n values is a text of its own:
    without the padding a file's chunks leave up to a driver's whole cache of statements with thousands of
    parameters each, and an ingest's memory grows with its file. With it, a few sizes serve every chunk.
    """
    if values:
        values = values + [values[-1]] * ((1 << (len(values) - 1).bit_length()) - len(values))
    return values


def apply_chunk(
    conn: Connection, file_row_id: int, file_id: str, network: str, key: str, records: list[Record], config: SettlementConfig
) -> dict[str, int]:
    """Ingest one chunk of presentments in the caller's transaction; counts by status."""
    if conn.execute(select(settlement_days.c.state).where(settlement_days.c.business_date == key)).scalar() == "settled":
        raise InvalidRequest(f"business day {key} was settled while the file was being ingested; ingest it again")
    done = _done_seqs(conn, file_row_id, records[0].seq, records[-1].seq)
    records = [r for r in records if r.seq not in done]
    if not records:
        return {}
    now = utcnow()
    calendar = config.calendar
    all_fps = sorted({fp for r in records for fp in r.fingerprints})
    card_by_fp = {
        row.pan_fingerprint: row
        for row in conn.execute(
            select(c.id, c.pan_fingerprint, c.status, c.account_id, a.currency, a.status.label("account_status"))
            .join(accounts, a.id == c.account_id).where(c.pan_fingerprint.in_(_in_list(all_fps)))
        )
    }
    codes = sorted({r.p.approval_code for r in records if r.p.approval_code})
    auth_rows: dict[tuple[str, str, int], Any] = {}
    if codes:
        for row in conn.execute(
            select(au.id, au.auth_code, au.rrn, au.card_id, au.approved_minor, au.hold_id, au.created_at)
            .where(au.auth_code.in_(_in_list(codes)), au.op == "hold", au.rc.in_(("00", "10")))
        ):
            auth_rows[(row.auth_code, row.rrn.strip(), row.card_id)] = row
    checksums = [r.checksum for r in records]
    seen_checksums = set(conn.execute(select(pr.record_checksum).where(pr.record_checksum.in_(_in_list(checksums)))).scalars())
    auth_ids = [row.id for row in auth_rows.values()]
    presented = set()
    if auth_ids:
        presented = set(conn.execute(
            select(pr.auth_id).where(pr.auth_id.in_(_in_list(auth_ids)), pr.status.in_(("matched", "forced")))
        ).scalars())
    hold_rows = {}
    hold_ids = [row.hold_id for row in auth_rows.values() if row.hold_id is not None]
    if hold_ids:
        hold_rows = {
            row.id: {"id": row.id, "status": row.status, "amount_minor": row.amount_minor}
            for row in conn.execute(select(h.id, h.status, h.amount_minor).where(h.id.in_(_in_list(hold_ids))))
        }

    st = BatchState(now=now, internal_ids={})
    clearing_ids: dict[str, int] = {}
    account_delta: defaultdict[int, list[int]] = defaultdict(lambda: [0, 0])  # ledger, held
    decisions: list[dict[str, Any]] = []
    exceptions: list[dict[str, Any]] = []
    captures: list[tuple[int, dt.datetime, int]] = []
    counts: defaultdict[str, int] = defaultdict(int)

    def exception(kind: str, r: Record, detail: str, currency: str) -> None:
        exceptions.append({"business_date": key, "kind": kind, "reference": f"{file_id}:{r.seq}", "detail": detail[:300],
                           "amount_minor": r.p.amount_minor, "currency": currency, "created_at": now})

    for r in records:
        p = r.p
        currency = alpha_for_numeric(p.currency_numeric) or p.currency_numeric
        card = next((card_by_fp[fp] for fp in r.fingerprints if fp in card_by_fp), None)
        status, reason, auth, post, forced = "rejected", "", None, False, True
        if r.checksum in seen_checksums:
            status, reason = "duplicate", "the same presentment was ingested before"
            exception("duplicate_presentment", r, f"ARN {p.arn}: {reason}", currency)
        elif card is None:
            reason = "card not issued here"
            exception("unmatched_presentment", r, f"ARN {p.arn} card ****{p.pan[-4:]}: {reason}", currency)
        elif card.currency != currency:
            reason = f"currency {currency} differs from the account's {card.currency}"
            exception("unmatched_presentment", r, f"ARN {p.arn}: {reason}", currency)
        elif card.status == "closed" and card.account_status == "closed":
            reason = "card and account closed"
            exception("closed_card", r, f"ARN {p.arn} card {card.id}: {reason}; not posted", currency)
        else:
            auth = auth_rows.get((p.approval_code, p.rrn, card.id)) if p.approval_code and not p.is_credit else None
            post, status = True, "matched"
            if card.status == "closed":
                status, reason = "forced", "card closed"
                exception("closed_card", r, f"ARN {p.arn} card {card.id}: presented after the card was closed", currency)
            if p.is_credit:
                forced = False
            elif auth is None:
                status, reason = "forced", "no authorization matches"
                exception("no_authorization", r, f"ARN {p.arn} code {p.approval_code or '-'} RRN {p.rrn}: force posted", currency)
            elif auth.id in presented:
                post, status, reason = False, "duplicate", f"authorization {auth.id} was already presented"
                exception("duplicate_presentment", r, f"ARN {p.arn}: {reason}", currency)
            else:
                hold = hold_rows.get(auth.hold_id)
                if hold is None or hold["status"] != "active":
                    status, reason = "forced", f"hold {auth.hold_id} is {hold['status'] if hold else 'missing'}"
                    exception("late_presentment", r, f"ARN {p.arn} auth {auth.id}: {reason}; force posted", currency)
                else:
                    captures.append((min(p.amount_minor, hold["amount_minor"]), now, hold["id"]))
                    account_delta[card.account_id][1] -= hold["amount_minor"]
                    hold["status"] = "captured"
                    forced = False
                over = p.amount_minor - auth.approved_minor
                if over > 0 and over * 10_000 > auth.approved_minor * config.tolerance_bps:
                    status, forced = "forced", True
                    reason = f"{p.amount_minor} presented for {auth.approved_minor} authorized"
                    exception("amount_over_tolerance", r, f"ARN {p.arn} auth {auth.id}: {reason}", currency)
                presented.add(auth.id)
        seen_checksums.add(r.checksum)
        counts[status] += 1
        signed = -p.amount_minor if p.is_credit else p.amount_minor
        if post:
            account_delta[card.account_id][0] -= signed
            if currency not in clearing_ids:
                clearing_ids[currency] = internal_account(conn, st, "clearing", currency)
        decisions.append({"r": r, "status": status, "reason": reason, "auth": auth, "card": card, "post": post,
                          "forced": forced, "currency": currency, "signed": signed})

    if conn.dialect.name == "postgresql":
        ids = sorted(set(account_delta) | set(clearing_ids.values()))
        if ids:
            conn.execute(select(a.id).where(a.id.in_(_in_list(ids))).order_by(a.id).with_for_update())
    if captures:
        done_holds = update_rows(
            conn, holds, "status = 'captured', captured_minor = {}, closed_at = {}", ("captured_minor", "closed_at"),
            "id = {} AND status = 'active'", ("id",), captures,
        )
        if done_holds not in (-1, len(captures)):
            raise InvalidRequest("a hold changed while its presentment was posted; ingest the file again")
    posted = [d for d in decisions if d["post"]]
    entry_ids: list[int] = []
    if posted:
        entry_ids = allocate_ids(conn, journal_entries, len(posted))
        insert_rows(conn, journal_entries, ("id", "kind", "reference", "auth_id", "forced", "created_at"), [
            (entry_id, "presentment", f"presentment:{file_id}:{d['r'].seq}", d["auth"].id if d["auth"] else None,
             d["forced"], now) for entry_id, d in zip(entry_ids, posted, strict=True)
        ])
        lines = []
        for d, entry_id in zip(posted, entry_ids, strict=True):
            d["entry_id"] = entry_id
            lines.append((entry_id, d["card"].account_id, -d["signed"], d["currency"]))
            lines.append((entry_id, clearing_ids[d["currency"]], d["signed"], d["currency"]))
        insert_rows(conn, postings, ("entry_id", "account_id", "amount_minor", "currency"), lines)
        clearing_delta: defaultdict[int, int] = defaultdict(int)
        for d in posted:
            clearing_delta[clearing_ids[d["currency"]]] += d["signed"]
        conn.execute(
            update(accounts).where(a.id == bindparam("aid"))
            .values(ledger_minor=a.ledger_minor + bindparam("dl"), held_minor=a.held_minor + bindparam("dh")),
            [{"aid": aid, "dl": dl, "dh": dh} for aid, (dl, dh) in sorted(account_delta.items())]
            + [{"aid": aid, "dl": d, "dh": 0} for aid, d in sorted(clearing_delta.items())],
        )
    insert_rows(conn, presentments, PRESENTMENT_COLUMNS, [
        (file_row_id, d["r"].seq, d["r"].checksum, d["status"], d["auth"].id if d["auth"] else None,
         d["card"].id if d["card"] else None, d["r"].p.amount_minor, d["currency"][:3], d["r"].p.approval_code[:8],
         d["r"].p.rrn[:12], d["r"].p.arn[:23], d["r"].p.merchant_id[:15], d["r"].p.pan[-4:], key, d.get("entry_id"),
         d["reason"][:200])
        for d in decisions
    ])
    items = []
    for d in decisions:
        if not d["post"]:
            continue
        p = d["r"].p
        kind = "presentment_credit" if p.is_credit else "presentment"
        _, interchange = config.fees.fees("refund" if p.is_credit else "purchase", p.amount_minor, p.mcc, p.entry_mode)
        origin = calendar.day_of(d["auth"].created_at).isoformat() if d["auth"] is not None else key
        items.append((
            f"pres:{file_row_id}:{d['r'].seq}", key, min(origin, key), "off_us", kind, network, p.terminal_id[:16], p.mcc,
            p.entry_mode[:2], d["auth"].id if d["auth"] else None, d["card"].id, d["signed"], 0, interchange, d["currency"], now,
        ))
    insert_rows(conn, settlement_items, ITEM_COLUMNS, items)
    if exceptions:
        conn.execute(insert(settlement_exceptions), exceptions)
    return dict(counts)


def finish_file(conn: Connection, file_row_id: int) -> dict[str, Any]:
    conn.execute(update(clearing_files).where(cf.id == file_row_id).values(status="complete"))
    return summarize_file(conn, file_row_id)


def summarize_file(conn: Connection, file_row_id: int) -> dict[str, Any]:
    row = conn.execute(select(clearing_files).where(cf.id == file_row_id)).one()
    by_status = {r.status: r.n for r in conn.execute(
        select(pr.status, func.count().label("n")).where(pr.clearing_file_id == file_row_id).group_by(pr.status)
    )}
    se = settlement_exceptions.c
    by_kind = {r.kind: r.n for r in conn.execute(
        select(se.kind, func.count().label("n")).where(se.reference.like(f"{row.file_id}:%")).group_by(se.kind)
    )}
    posted = conn.execute(
        select(func.count(), func.coalesce(func.sum(pr.amount_minor), 0))
        .where(pr.clearing_file_id == file_row_id, pr.entry_id.is_not(None))
    ).one()
    return {"file_id": row.file_id, "network": row.network, "business_date": row.business_date, "status": row.status,
            "records": row.records, "control_sum_minor": row.control_sum_minor, "by_status": by_status,
            "posted": posted[0], "posted_minor": int(posted[1]), "exceptions": by_kind}


async def ingest_file(
    store: StoreInterface,
    hsm: HsmApi,
    path: Path,
    config: SettlementConfig,
    *,
    now: dt.datetime | None = None,
    progress: Callable[[str, int, int | None], None] | None = None,
) -> dict[str, Any]:
    """Ingest a clearing file (see the module); ingesting the same file again changes nothing."""
    from processor.settlement.queries import network_ids

    try:
        header = scan_clearing_file(path)
    except OSError as exc:
        raise InvalidRequest(f"cannot read the clearing file {path}: {exc.strerror or exc}") from None
    except ClearingFileError as exc:
        raise InvalidRequest(f"clearing file {path} refused: {exc}") from None
    if header.network not in await store.run_read(network_ids):
        raise InvalidRequest(
            f"network {header.network} is not registered; `processor settle network add --acquirer {header.network} --name ...`"
        )
    today = config.calendar.day_of(now or utcnow())
    state = await store.run_write(begin_file, header, today)
    if state["status"] == "complete":
        result = await store.run_read(summarize_file, state["id"])
        result["already_ingested"] = True
        return result
    await store.run_write(refresh_statistics, (auths, cards, holds, presentments))
    # Chunk n+1 is read and fingerprinted while chunk n is written: each chunk is still one transaction,
    # written in file order, so a killed run keeps whole chunks and resumes after the last one.
    done = 0
    pending: asyncio.Task[dict[str, int]] | None = None
    try:
        for chunk in _chunks(read_presentments(path), CHUNK):
            records = await _fingerprinted(hsm, chunk)
            if pending is not None:
                await pending
                done += CHUNK
                if progress:
                    progress("ingest", done, header.count)
            pending = asyncio.ensure_future(store.run_write(
                apply_chunk, state["id"], header.file_id, header.network, state["business_date"], records, config
            ))
        if pending is not None:
            await pending
            pending = None
            if progress:
                progress("ingest", header.count, header.count)
    finally:
        if pending is not None:
            # The chunk's transaction commits or rolls back on its own; wait for it rather than leave it behind.
            await asyncio.gather(pending, return_exceptions=True)
    result = await store.run_write(finish_file, state["id"])
    result["already_ingested"] = False
    return result


def _chunks(rows: Iterator[tuple[int, Presentment, str]], size: int) -> Iterator[list[tuple[int, Presentment, str]]]:
    chunk: list[tuple[int, Presentment, str]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


async def _fingerprinted(hsm: HsmApi, chunk: list[tuple[int, Presentment, str]]) -> list[Record]:
    """The chunk's records with their PANs' fingerprints: as many PANs per HSM command as its answer holds."""
    pans = [p.pan for _, p, _ in chunk]
    versions = len(await hsm.fingerprint_pan(pans[0]))
    step = max(1, MAX_PAN_FINGERPRINTS // versions)
    parts = await asyncio.gather(*(hsm.fingerprint_pans(pans[i : i + step]) for i in range(0, len(pans), step)))
    fingerprints = [tuple(fp for _, fp in one) for part in parts for one in part]
    return [Record(seq, p, checksum, fps) for (seq, p, checksum), fps in zip(chunk, fingerprints, strict=True)]

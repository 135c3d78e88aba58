"""A synthetic business day written straight into the store, for benchmarks: `processor settle generate`.

It issues `cards` funded cards and `merchants` merchants with one terminal each (through the store's and
the issuer's ordinary functions), then writes `transactions` approved on-us requests spread over the day's
window: 94 % purchases, 3 % refunds, 3 % reversals of a purchase, each with its auths row, its balanced
journal entry (cardholder <-> clearing) and the account balances, exactly as the engine leaves them. With
`presentments` it also writes that many off-us authorizations (holds) of the network and its clearing
file presenting each of them. Rows go in chunks of `CHUNK`, one transaction each: memory stays flat.
"""

from __future__ import annotations

import datetime as dt
import random
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, update

from hsm_sim import HsmApi
from processor import issuing, ledger
from processor.ledger import StoreInterface
from processor.ledger.apply import BatchState, internal_account
from processor.ledger.models import accounts, auths, holds, journal_entries, postings, utcnow
from processor.settlement.bulk import insert_rows, refresh_statistics
from processor.settlement.config import SettlementConfig, add_network, network_key

CHUNK = 10_000
MCCS = ("5411", "5812", "5541", "5732", "5999", "7011", "5311")
ENTRY = ("05", "07", "07", "90", "01")


def _write_chunk(conn: Connection, rows: list[dict[str, Any]], hold_rows: list[dict[str, Any]], currency: str) -> None:
    """Insert one chunk of auths (with their entries, postings, holds) and move the balances."""
    st = BatchState(now=utcnow(), internal_ids={})
    clearing = internal_account(conn, st, "clearing", currency)
    ledger: defaultdict[int, int] = defaultdict(int)
    held: defaultdict[int, int] = defaultdict(int)
    money = [r for r in rows if r["op"] != "hold"]
    if money:
        entry_ids = list(conn.execute(
            insert(journal_entries).returning(journal_entries.c.id, sort_by_parameter_order=True),
            [{"kind": r["op"], "reference": r["idem_key"], "auth_id": None, "forced": False, "created_at": r["created_at"]}
             for r in money],
        ).scalars())
        lines = []
        for r, entry_id in zip(money, entry_ids, strict=True):
            r["entry_id"] = entry_id
            # A purchase takes from the cardholder; a refund, or the reversal of a purchase, gives back.
            signed = -r["approved_minor"] if r["op"] == "debit" else r["approved_minor"]
            lines.append((entry_id, r["account_id"], signed, currency))
            lines.append((entry_id, clearing, -signed, currency))
            ledger[r["account_id"]] += signed
            ledger[clearing] -= signed
        insert_rows(conn, postings, ("entry_id", "account_id", "amount_minor", "currency"), lines)
    hold_ids: list[int] = []
    if hold_rows:
        hold_ids = list(conn.execute(insert(holds).returning(holds.c.id, sort_by_parameter_order=True), hold_rows).scalars())
        for h in hold_rows:
            held[h["account_id"]] += h["amount_minor"]
        for r, hold_id in zip([r for r in rows if r["op"] == "hold"], hold_ids, strict=True):
            r["hold_id"] = hold_id
    columns = tuple(rows[0])
    insert_rows(conn, auths, columns, [tuple(r[c] for c in columns) for r in rows])
    params = [{"aid": aid, "dl": ledger.get(aid, 0), "dh": held.get(aid, 0)} for aid in sorted(set(ledger) | set(held))]
    a = accounts.c
    conn.execute(
        update(accounts).where(a.id == bindparam("aid"))
        .values(ledger_minor=a.ledger_minor + bindparam("dl"), held_minor=a.held_minor + bindparam("dh")),
        params,
    )


def _next_auth_id(conn: Connection) -> int:
    from sqlalchemy import func

    return (conn.execute(select(func.max(auths.c.id))).scalar() or 0) + 1


async def generate_day(
    store: StoreInterface,
    hsm: HsmApi,
    day: dt.date,
    config: SettlementConfig,
    *,
    transactions: int,
    merchants: int = 200,
    cards: int = 1000,
    presentments: int = 0,
    clearing_file: Path | None = None,
    network: str = "400001",
    seed: int = 1,
    progress: Callable[[str, int, int | None], None] | None = None,
) -> dict[str, Any]:
    """Write the synthetic day (see the module); what was written."""
    from processor.iso8583.clearing import ClearingWriter, Presentment
    from processor.issuing import ensure_issuer_keys, issue_card

    if presentments and clearing_file is None:
        from processor.errors import InvalidRequest

        raise InvalidRequest("presentments need --clearing-file: where the network's file goes")
    rng = random.Random(seed)
    keys = await ensure_issuer_keys(store, hsm)
    tag = f"{day:%y%m%d}{seed % 100:02d}"
    merchant_ids = []
    for m in range(merchants):
        merchant_id = f"GEN{tag}{m:04d}"[:15]
        if await issuing.merchants.get(store, merchant_id) is None:
            await issuing.merchants.add(store, merchant_id=merchant_id, name=f"Generated {m}", mcc=MCCS[m % len(MCCS)])
            await issuing.terminals.create(store, terminal_id=f"G{m:07d}", merchant_id=merchant_id)
        merchant_ids.append((f"G{m:07d}", merchant_id, MCCS[m % len(MCCS)]))
    card_list = []
    for i in range(cards):
        holder = await issuing.cardholders.create(store, f"Generated {i}", f"gen-{tag}-{i}")
        account = await ledger.accounts.open_account(store, holder, "checking", "EUR")
        await ledger.accounts.deposit(store, account, 10_000_000_00, reference="generated funding")
        issued = await issue_card(store, hsm, keys, account_id=account, pin=None, chip=False)
        card_list.append((issued.id, account, issued))
        if progress and (i + 1) % 100 == 0:
            progress("cards", i + 1, cards)
    start, end = config.calendar.window(day)
    span = (end - start).total_seconds()
    next_id = await store.run_read(_next_auth_id)
    written = 0
    total = transactions + presentments
    purchases: list[tuple[int, dict[str, Any]]] = []
    writer = None
    if presentments:
        if await network_key(store, network.lstrip("0")) is None:
            await add_network(store, hsm, keys, network, "Generated network")
        assert clearing_file is not None
        writer = ClearingWriter(clearing_file, file_id=f"GEN-{network}-{tag}", network=network.rjust(6, "0"), business_date=day)
    try:
        seq = 0
        while written < total:
            rows: list[dict[str, Any]] = []
            hold_rows: list[dict[str, Any]] = []
            pending_presentments = []
            for _ in range(min(CHUNK, total - written)):
                seq += 1
                card_id, account_id, issued = card_list[rng.randrange(len(card_list))]
                at = start + dt.timedelta(seconds=span * (seq / (total + 1)))
                amount = rng.randint(1_00, 150_00)
                base = {
                    "idem_key": f"gen:{tag}:{seq}", "ref": f"gen:{tag}:{seq}", "result": "approved", "mti": "0200", "terminal_id": "", "stan": f"{seq % 1_000_000:06d}",
                    "rrn": f"{seq:012d}", "card_id": card_id, "account_id": account_id, "amount_minor": amount,
                    "currency": "EUR", "rc": "00", "approved_minor": amount, "auth_code": None, "reason": "approved",
                    "hold_id": None, "entry_id": None, "original_auth_id": None, "reversed": False, "ledger_minor": None,
                    "available_minor": None, "batch_id": None, "acquirer_id": "1", "merchant_id": "", "mcc": "",
                    "entry_mode": ENTRY[seq % len(ENTRY)], "created_at": at, "id": next_id,
                }
                next_id += 1
                if written + len(rows) >= transactions:
                    code = f"{rng.randrange(36**6):06X}"[:6]
                    base.update(op="hold", mti="0100", terminal_id="NETT0001", auth_code=code, acquirer_id=network,
                                merchant_id="NETMERCHANT0001", mcc="5999", entry_mode="01")
                    hold_rows.append({"account_id": account_id, "card_id": card_id, "auth_id": base["id"], "amount_minor": amount,
                                      "currency": "EUR", "status": "active", "forced": False,
                                      "expires_at": at + dt.timedelta(days=7), "created_at": at, "closed_at": None,
                                      "captured_minor": None})
                    pending_presentments.append((issued, base))
                else:
                    terminal_id, merchant_id, mcc = merchant_ids[seq % len(merchant_ids)]
                    base.update(terminal_id=terminal_id, merchant_id=merchant_id, mcc=mcc)
                    roll = rng.random()
                    if roll < 0.03 and purchases:
                        original_id, original = purchases.pop(rng.randrange(len(purchases)))
                        base.update(op="reverse", mti="0400", terminal_id=original["terminal_id"], card_id=original["card_id"],
                                    account_id=original["account_id"], amount_minor=original["approved_minor"],
                                    approved_minor=original["approved_minor"], original_auth_id=original_id)
                    elif roll < 0.06:
                        base.update(op="credit", mti="0200", auth_code=f"{seq % 999999:06d}")
                    else:
                        base.update(op="debit", auth_code=f"{seq % 999999:06d}")
                        if len(purchases) < 1000:
                            purchases.append((base["id"], base))
                rows.append(base)
            await store.run_write(_write_chunk, rows, hold_rows, "EUR")
            for issued, auth in pending_presentments:
                assert writer is not None
                writer.add(Presentment(
                    pan=issued.pan, amount_minor=auth["approved_minor"], currency_numeric="978",
                    local_time=auth["created_at"].replace(tzinfo=None, microsecond=0), mcc="5999", entry_mode="01",
                    acquirer_id=network, rrn=auth["rrn"], approval_code=auth["auth_code"], terminal_id="NETT0001",
                    merchant_id="NETMERCHANT0001", name_location="Generated network merchant", arn=f"G{auth['id']:022d}",
                ))
            written += len(rows)
            if progress:
                progress("generate", written, total)
        if writer is not None:
            writer.close()
            writer = None
        # A bulk load is analyzed, as an operator would after one, so what runs next plans on its real size.
        await store.run_write(refresh_statistics, (auths, holds, journal_entries, postings, accounts))
    finally:
        if writer is not None:
            writer.abort()
    return {"business_date": day.isoformat(), "transactions": transactions, "presentments": presentments,
            "merchants": merchants, "cards": cards, "clearing_file": str(clearing_file) if presentments else None}

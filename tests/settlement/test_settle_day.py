"""Closing a business day on-us: positions, fees, postings, files, idempotency, adjustments, exceptions."""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import pytest
from settlement_helpers import all_captured_at, captured_at
from sqlalchemy import func, select

from processor import ledger
from processor.errors import InvalidRequest
from processor.ledger.models import accounts, journal_entries
from processor.settlement.config import load_config
from processor.settlement.day import settle_day
from processor.settlement.report import build_report
from terminal_sim.batch_close import close_batch

DAY = dt.date(2026, 3, 29)  # 23 hours in Europe/Paris: the clocks go forward that night
PARIS_NOON = dt.datetime(2026, 3, 29, 10, 0, tzinfo=dt.UTC)  # 12:00 CEST
CUTOFF = dt.datetime(2026, 3, 29, 20, 0, tzinfo=dt.UTC)  # 22:00 CEST


async def settle(store: Any, day: dt.date, out: Path) -> dict[str, Any]:
    return await settle_day(store, day, await load_config(store), out_dir=out)


async def internal_balance(store: Any, purpose: str) -> int:
    def body(conn: Any) -> int:
        a = accounts.c
        return conn.execute(select(a.ledger_minor).where(a.purpose == purpose, a.currency == "EUR")).scalar() or 0

    return await store.run_read(body)


async def entry_count(store: Any) -> int:
    return await store.run_read(lambda conn: conn.execute(select(func.count()).select_from(journal_entries)).scalar_one())


async def test_a_day_pays_each_merchant_its_net_after_fees_and_posts_it_once(issuer: Any, tmp_path: Path) -> None:
    shop, ada = issuer.terminals["shop"], issuer.cards["ada"]
    store = issuer.running.store
    for amount in (100_00, 20_00):
        assert (await issuer.send(shop.card_request(ada, amount)))["39"] == "00"
    reversed_sale = shop.card_request(ada, 30_00)
    assert (await issuer.send(reversed_sale))["39"] == "00"
    reversal = shop.card_request(ada, 30_00, mti="0400")
    reversal["90"] = shop.original_data(reversed_sale)
    assert (await issuer.send(reversal))["39"] == "00"
    assert (await issuer.send(shop.card_request(ada, 5_00, processing_code="200000")))["39"] == "00"
    await all_captured_at(store, PARIS_NOON)
    at_cutoff = shop.card_request(ada, 7_00)
    assert (await issuer.send(at_cutoff))["39"] == "00"
    await captured_at(store, [at_cutoff["37"]], CUTOFF)

    summary = await settle(store, DAY, tmp_path / "out")

    assert summary["window"]["hours"] == 23
    assert summary["items"] == 5  # the sale at exactly 22:00 belongs to the next day
    (merchant,) = summary["merchants"]
    assert merchant["party"] == "SHOP00000000001"
    assert (merchant["purchases_count"], merchant["purchases_minor"]) == (3, 150_00)
    assert (merchant["reversals_count"], merchant["reversals_minor"]) == (1, 30_00)
    assert (merchant["refunds_count"], merchant["refunds_minor"]) == (1, 5_00)
    assert merchant["gross_minor"] == 115_00
    # Grocery (5411): 0.90 % + 0.05 per sale, the reversal gives the percentage back, refunds pay none.
    assert merchant["fee_minor"] == (90 + 5) + (18 + 5) + (27 + 5) - 27
    assert merchant["interchange_minor"] == 20 + 4 + 6 - 6
    assert merchant["net_minor"] == 115_00 - 123
    assert await internal_balance(store, "merchant_payable") == 115_00 - 123
    assert await internal_balance(store, "fee_income") == 123 - 24
    assert await internal_balance(store, "interchange_income") == 24
    assert await ledger.invariants.check(store) == []
    assert summary["exceptions"] == {"batch_not_closed": 1}

    files = summary["files"]
    csv_path, json_path = Path(files["settlement_csv"]["path"]), Path(files["settlement_json"]["path"])
    assert os.stat(csv_path).st_mode & 0o777 == 0o600
    document = json.loads(json_path.read_text())
    assert document["format"] == "settlement-file/1"
    assert len(document["transactions"]) == 5
    assert document["totals"]["EUR"] == {"count": 5, "net_minor": 115_00, "control_sum_minor": 185_00}
    rows = list(csv.reader(csv_path.open()))
    assert rows[0][0].startswith("#format=settlement-file/1")
    assert [r for r in rows if r[0] == "S"] == [["S", "EUR", "5", "11500", "18500"]]
    payouts = Path(files["payouts_csv"]["path"]).read_text()
    assert "merchant,SHOP00000000001,EUR,11500,123,24,11377,we pay" in payouts

    entries = await entry_count(store)
    again = await settle(store, DAY, tmp_path / "out")
    assert await entry_count(store) == entries
    assert {k: v for k, v in again.items() if k not in ("files", "jobs")} == {
        k: v for k, v in summary.items() if k not in ("files", "jobs")
    }
    assert not any(f["written"] for f in again["files"].values())

    next_day = await settle(store, DAY + dt.timedelta(days=1), tmp_path / "out")
    assert next_day["items"] == 1 and next_day["merchants"][0]["purchases_minor"] == 7_00


async def test_a_reversal_after_its_day_was_settled_is_an_adjustment_in_the_next_day(issuer: Any, tmp_path: Path) -> None:
    shop, grace = issuer.terminals["shop"], issuer.cards["grace"]
    store = issuer.running.store
    sale = shop.card_request(grace, 40_00)
    assert (await issuer.send(sale))["39"] == "00"
    await all_captured_at(store, PARIS_NOON)
    first = await settle(store, DAY, tmp_path / "out")
    assert first["merchants"][0]["gross_minor"] == 40_00

    reversal = shop.card_request(grace, 40_00, mti="0400")
    reversal["90"] = shop.original_data(sale)
    assert (await issuer.send(reversal))["39"] == "00"
    await captured_at(store, [reversal["37"]], PARIS_NOON + dt.timedelta(days=1))
    second = await settle(store, DAY + dt.timedelta(days=1), tmp_path / "out")

    (merchant,) = second["merchants"]
    assert (merchant["adjustments_count"], merchant["adjustments_minor"]) == (1, -40_00)
    assert merchant["reversals_minor"] == 40_00 and merchant["gross_minor"] == -40_00
    report = await build_report(store, DAY)
    assert report["later_adjustments"] == [
        {"settled_in": "2026-03-30", "side": "on_us", "party": "SHOP00000000001", "kind": "reversal", "count": 1,
         "amount_minor": -40_00, "currency": "EUR"}
    ]
    assert report["merchants"][0]["gross_minor"] == 40_00  # the settled day itself is not rewritten
    assert await ledger.invariants.check(store) == []


async def test_an_empty_day_settles_with_zero_totals_and_empty_files(issuer: Any, tmp_path: Path) -> None:
    summary = await settle(issuer.running.store, DAY, tmp_path / "out")
    assert summary["items"] == 0 and summary["merchants"] == [] and summary["totals"] == {}
    document = json.loads(Path(summary["files"]["settlement_json"]["path"]).read_text())
    assert document["transactions"] == [] and document["totals"] == {}


async def test_out_of_balance_and_unclosed_batches_are_exceptions(issuer: Any, tmp_path: Path) -> None:
    shop, market, ivan = issuer.terminals["shop"], issuer.terminals["market"], issuer.cards["ivan"]
    store = issuer.running.store
    request = shop.card_request(ivan, 12_00)
    answer = await issuer.send(request)
    shop.batch.record(request, answer)
    shop.batch.record(request | {"11": "999999"}, answer)  # the terminal counts a sale the issuer never saw
    report = await close_batch(issuer.conn, shop, timeout_s=5.0)
    assert not report.in_balance
    assert (await issuer.send(market.card_request(ivan, 3_00)))["39"] == "00"
    await all_captured_at(store, PARIS_NOON)

    def move_batches(conn: Any) -> None:
        from sqlalchemy import update

        from processor.ledger.models import terminal_batches

        conn.execute(update(terminal_batches).values(closed_at=PARIS_NOON))

    await store.run_write(move_batches)
    summary = await settle(store, DAY, tmp_path / "out")
    assert summary["exceptions"] == {"batch_out_of_balance": 1, "batch_not_closed": 1}


async def test_a_day_is_not_settled_before_its_cutoff_nor_before_an_earlier_open_day(issuer: Any, tmp_path: Path) -> None:
    store = issuer.running.store
    today = (await load_config(store)).calendar.day_of(dt.datetime.now(dt.UTC))
    with pytest.raises(InvalidRequest, match="not over until"):
        await settle(store, today, tmp_path)
    assert (await issuer.send(issuer.terminals["shop"].card_request(issuer.cards["ada"], 1_00)))["39"] == "00"
    await all_captured_at(store, PARIS_NOON)
    with pytest.raises(InvalidRequest, match="day 2026-03-29 has transactions and is not settled"):
        await settle(store, DAY + dt.timedelta(days=1), tmp_path)
    await settle(store, DAY, tmp_path)
    with pytest.raises(InvalidRequest, match="comes before the settled day"):
        await settle(store, DAY - dt.timedelta(days=1), tmp_path)

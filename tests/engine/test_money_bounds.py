"""No money from nowhere: advices within a floor limit, completions within their tolerance, refunds within
their purchase or their merchant's limits, partial reversals within their original, unknown codes refused."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

from engine_helpers import Issuer
from processor import issuing
from processor.auth.cli import _exceptions
from processor.auth.policy import COMPLETION_TOLERANCE_PCT
from processor.ledger import invariants
from processor.ledger.apply import BatchState, internal_account, post_entry
from processor.ledger.models import accounts

README = Path(__file__).resolve().parents[2] / "README.md"


async def balances(issuer: Issuer, name: str) -> tuple[int, int]:
    view = await issuer.account(name)
    return view.ledger_minor, view.available_minor


async def exceptions(issuer: Issuer) -> list[dict[str, Any]]:
    return await issuer.running.store.run_query(_exceptions, 100)


async def test_advices_are_honoured_up_to_the_floor_limit_only(issuer: Issuer) -> None:
    shop, market, ivan = issuer.terminals["shop"], issuer.terminals["market"], issuer.cards["ivan"]  # ivan: 200.00
    within = await issuer.send(shop.card_request(ivan, 100_00, mti="0120"))
    assert (within["t"], within["39"]) == ("0130", "00")
    assert await balances(issuer, "ivan") == (200_00, 100_00)

    above = await issuer.send(shop.card_request(ivan, 100_01, mti="0120"))
    credit = await issuer.send(shop.card_request(ivan, 5_00, mti="0120", processing_code="200000"))
    assert (above["t"], above["39"], credit["39"]) == ("0130", "05", "05")
    assert await balances(issuer, "ivan") == (200_00, 100_00), "an advice not honoured moves no money"
    listed = await exceptions(issuer)
    assert [(e["amount_minor"], e["rc"]) for e in listed] == [(5_00, "05"), (100_01, "05")]
    assert "floor limit" in listed[1]["reason"] and "credit" in listed[0]["reason"]

    # A terminal's own floor limit, set by the operator, wins over the default.
    await issuing.config.put(issuer.running.store, f"floor_limit.terminal.{market.terminal_id}", "2000")
    assert (await issuer.send(market.card_request(ivan, 20_01, mti="0120")))["39"] == "05"
    assert (await issuer.send(market.card_request(ivan, 20_00, mti="0120")))["39"] == "00"
    assert await balances(issuer, "ivan") == (200_00, 80_00)
    assert await invariants.check(issuer.running.store) == []


async def test_a_completion_goes_at_most_its_tolerance_above_the_authorization(issuer: Issuer) -> None:
    shop, hotel, ivan = issuer.terminals["shop"], issuer.terminals["hotel"], issuer.cards["ivan"]
    auth = shop.card_request(ivan, 50_00, mti="0100")
    assert (await issuer.send(auth))["39"] == "00"
    refused = await issuer.send(shop.completion(auth, 50_01))  # groceries: 0 %
    assert refused["39"] == "13"
    assert await balances(issuer, "ivan") == (200_00, 150_00), "the hold is untouched"
    assert (await issuer.send(shop.completion(auth, 50_00)))["39"] == "00"

    stay = hotel.card_request(ivan, 100_00, mti="0100", entry="manual", cvv2=ivan.cvv2)
    assert (await issuer.send(stay))["39"] == "00"
    assert (await issuer.send(hotel.completion(stay, 115_01)))["39"] == "13"  # hotels: 15 %
    assert await balances(issuer, "ivan") == (150_00, 50_00)
    assert (await issuer.send(hotel.completion(stay, 115_00)))["39"] == "00"
    assert await balances(issuer, "ivan") == (35_00, 35_00)
    assert await invariants.check(issuer.running.store) == []


def _refund(terminal: Any, card: Any, amount_minor: int, *, mti: str = "0200", of: dict[str, Any] | None = None,
            rrn: str | None = None) -> dict[str, Any]:
    fields = terminal.card_request(card, amount_minor, mti=mti, processing_code="200000",
                                   extra_de48={"OR": rrn} if rrn else None)
    if of is not None:
        fields["90"] = terminal.original_data(of)
    return fields


async def test_a_refund_of_a_purchase_gives_back_at_most_what_remains_of_it(issuer: Issuer) -> None:
    shop, ivan = issuer.terminals["shop"], issuer.cards["ivan"]
    sale = shop.card_request(ivan, 80_00)
    assert (await issuer.send(sale))["39"] == "00"
    assert (await issuer.send(_refund(shop, ivan, 50_00, of=sale)))["39"] == "00"
    assert (await issuer.send(_refund(shop, ivan, 30_01, of=sale)))["39"] == "13"
    assert (await issuer.send(_refund(shop, ivan, 30_00, rrn=sale["37"])))["39"] == "00"  # by its RRN
    assert (await issuer.send(_refund(shop, ivan, 1, of=sale)))["39"] == "13"
    assert await balances(issuer, "ivan") == (200_00, 200_00)
    # Another card cannot be refunded a purchase that was not its own.
    assert (await issuer.send(_refund(shop, issuer.cards["grace"], 10_00, of=sale)))["39"] == "25"
    assert await invariants.check(issuer.running.store) == []


async def test_a_refund_without_its_purchase_stays_within_the_merchants_limits(issuer: Issuer) -> None:
    shop, market, ivan = issuer.terminals["shop"], issuer.terminals["market"], issuer.cards["ivan"]
    assert (await issuer.send(_refund(shop, ivan, 999_999_999_999)))["39"] == "13"  # 9,999,999,999.99
    assert (await issuer.send(_refund(shop, ivan, 9_999_999_99)))["39"] == "61"
    assert (await issuer.send(_refund(shop, ivan, 50_01)))["39"] == "61"  # per transaction: 50.00 by default
    codes = [(await issuer.send(_refund(shop, ivan, 50_00)))["39"] for _ in range(5)]
    assert codes == ["00"] * 4 + ["61"]  # per merchant and day: 200.00 by default
    assert await balances(issuer, "ivan") == (400_00, 400_00)
    # The operator raises one merchant's limits; the others keep theirs.
    await issuing.config.put(issuer.running.store, f"refund_limits.merchant.{market.merchant_id}", "100000,100000")
    assert (await issuer.send(_refund(market, ivan, 1_000_01)))["39"] == "61"
    assert (await issuer.send(_refund(market, ivan, 1_000_00)))["39"] == "00"
    assert (await issuer.send(_refund(shop, ivan, 1_00)))["39"] == "61"
    assert await invariants.check(issuer.running.store) == []


async def test_an_authorized_refund_credits_nothing_until_its_completion(issuer: Issuer) -> None:
    shop, ivan = issuer.terminals["shop"], issuer.cards["ivan"]
    auth = _refund(shop, ivan, 40_00, mti="0100")
    assert (await issuer.send(auth))["39"] == "00"
    assert await balances(issuer, "ivan") == (200_00, 200_00)
    assert (await issuer.send(shop.completion(auth, 40_01)))["39"] == "13"
    assert (await issuer.send(shop.completion(auth, 40_00)))["39"] == "00"
    assert await balances(issuer, "ivan") == (240_00, 240_00)
    assert (await issuer.send(shop.completion(auth, 40_00)))["39"] == "25", "completed once only"
    assert await balances(issuer, "ivan") == (240_00, 240_00)
    assert await invariants.check(issuer.running.store) == []


async def test_a_partial_reversal_above_the_original_is_refused_and_the_original_stays_reversible(issuer: Issuer) -> None:
    shop, ivan = issuer.terminals["shop"], issuer.cards["ivan"]
    sale = shop.card_request(ivan, 30_00)
    assert (await issuer.send(sale))["39"] == "00"
    assert (await issuer.send(shop.reversal(sale, remaining_minor=9_999_999_99)))["39"] == "13"
    assert await balances(issuer, "ivan") == (170_00, 170_00)
    assert (await issuer.send(shop.reversal(sale, remaining_minor=10_00)))["39"] == "00"  # the sale was 10.00
    assert await balances(issuer, "ivan") == (190_00, 190_00)

    auth = shop.card_request(ivan, 20_00, mti="0100")
    assert (await issuer.send(auth))["39"] == "00"
    assert (await issuer.send(shop.reversal(auth, remaining_minor=20_01)))["39"] == "13"
    assert await balances(issuer, "ivan") == (190_00, 170_00)
    assert (await issuer.send(shop.reversal(auth)))["39"] == "00"
    assert await balances(issuer, "ivan") == (190_00, 190_00)


async def test_unknown_processing_codes_are_refused_and_move_nothing(issuer: Issuer) -> None:
    shop, ivan = issuer.terminals["shop"], issuer.cards["ivan"]
    for mti in ("0100", "0200", "0120"):
        answer = await issuer.send(shop.card_request(ivan, 10_00, mti=mti, processing_code="990000"))
        assert answer["39"] == ("05" if mti == "0120" else "12"), mti
    sale = shop.card_request(ivan, 10_00)
    assert (await issuer.send(sale))["39"] == "00"
    completion = shop.completion(sale, 10_00)
    completion["3"] = "990000"
    reversal = shop.reversal(sale)
    reversal["3"] = "770000"
    assert [(await issuer.send(m))["39"] for m in (completion, reversal)] == ["12", "12"]
    assert await balances(issuer, "ivan") == (190_00, 190_00)


async def test_ledger_check_reports_a_credit_without_its_source(issuer: Issuer) -> None:
    store = issuer.running.store
    account = issuer.accounts["ivan"]

    def forge(conn: Any) -> None:
        # A refund entry that balances and keeps every balance in step, but that no request stands behind.
        state = BatchState(now=dt.datetime.now(dt.UTC), internal_ids={})
        clearing = internal_account(conn, state, "clearing", "EUR")
        post_entry(conn, state, "refund", "forged", [(clearing, -5_00), (account, 5_00)], "EUR")
        for account_id, delta in ((account, 5_00), (clearing, -5_00)):
            conn.execute(accounts.update().where(accounts.c.id == account_id).values(ledger_minor=accounts.c.ledger_minor + delta))

    assert await invariants.check(store) == []
    await store.run_write(forge)
    assert any("credits without its source" in f for f in await invariants.check(store))


def test_the_readme_lists_the_completion_tolerances() -> None:
    text = README.read_text(encoding="utf-8")
    for mcc, pct in COMPLETION_TOLERANCE_PCT.items():
        if len(mcc) == 4 and not ("3501" <= mcc <= "3999" or "3351" <= mcc <= "3500"):
            assert re.search(rf"\b{mcc}\b[^\n]*\| {pct} %", text), f"MCC {mcc} ({pct} %) missing from the README"

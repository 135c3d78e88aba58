"""End-of-day batch close (0500/0510): the terminal's totals against the issuer's, closed exactly once."""

from __future__ import annotations

import asyncio
from typing import Any

from engine_helpers import Issuer

from processor import ledger
from processor.iso8583 import BatchTotals, parse_net_amount
from terminal_sim.batch_close import close_batch, reconciliation_request
from terminal_sim.iso_client import TerminalConnection
from terminal_sim.pos import PosTerminal


async def play(issuer: Issuer, terminal: PosTerminal, request: dict[str, Any]) -> dict[str, Any]:
    answer = await issuer.send(request)
    terminal.batch.record(request, answer)
    return answer


async def a_day_at_the_shop(issuer: Issuer) -> PosTerminal:
    """Sales, a refund, reversals full and partial, a completed pre-authorization, declines, an inquiry."""
    shop, hotel = issuer.terminals["shop"], issuer.terminals["hotel"]
    ada, bob = issuer.cards["ada"], issuer.cards["bob"]
    assert (await play(issuer, shop, shop.card_request(ada, 12_00, entry="magstripe")))["39"] == "00"
    assert (await play(issuer, shop, shop.card_request(ada, 3_50, entry="magstripe", with_pin=True)))["39"] == "00"
    refund = shop.card_request(ada, 2_00, processing_code="200000", entry="magstripe")
    assert (await play(issuer, shop, refund))["39"] == "00"
    voided = shop.card_request(ada, 9_99, entry="magstripe")
    assert (await play(issuer, shop, voided))["39"] == "00"
    assert (await play(issuer, shop, shop.reversal(voided)))["39"] == "00"
    pumped = shop.card_request(ada, 40_00, entry="magstripe")
    assert (await play(issuer, shop, pumped))["39"] == "00"
    assert (await play(issuer, shop, shop.reversal(pumped, remaining_minor=31_25)))["39"] == "00"
    # A second reversal of the same sale changes nothing, at the issuer and in the terminal's journal.
    assert (await play(issuer, shop, shop.reversal(pumped, remaining_minor=20_00)))["39"] == "00"
    partial = await play(issuer, shop, shop.card_request(bob, 50_00, entry="magstripe", partial_ok=True))
    assert partial["39"] == "10"
    assert (await play(issuer, shop, shop.card_request(bob, 50_00, entry="magstripe")))["39"] == "51"
    assert (await play(issuer, shop, shop.card_request(ada, 0, processing_code="310000", entry="magstripe")))["39"] == "00"
    held = shop.card_request(ada, 20_00, mti="0100", entry="magstripe")
    assert (await play(issuer, shop, held))["39"] == "00"
    assert (await play(issuer, shop, shop.completion(held, 18_00)))["39"] == "00"
    # Another terminal's sale belongs to its own batch.
    assert (await play(issuer, hotel, hotel.card_request(ada, 7_00, entry="manual", cvv2=ada.cvv2)))["39"] == "00"
    return shop


async def test_a_day_in_balance_then_a_fresh_batch(issuer: Issuer) -> None:
    shop = await a_day_at_the_shop(issuer)
    # Debits: 12.00, 3.50, what remained of 40.00 (31.25), bob's partial approval (his 10.00), the completion.
    assert shop.batch.totals() == BatchTotals(credits_count=1, credits_minor=2_00, debits_count=5, debits_minor=74_75)
    report = await close_batch(issuer.conn, shop)
    assert report.rc == "00" and report.in_balance
    assert report.host == report.terminal
    assert report.batch_number == "000001" and shop.batch.number == 2 and not shop.batch.items
    store = issuer.running.store
    [closed] = await ledger.terminal_batches.list_closed(store, "SHOP0001")
    assert closed.rc == "00" and closed.host.debits_minor == report.terminal.debits_minor
    # Nothing happened since: the next close is empty on both sides.
    again = await close_batch(issuer.conn, shop)
    assert again.rc == "00" and again.host == BatchTotals() and again.batch_number == "000002"
    assert len(await ledger.terminal_batches.list_closed(store, "SHOP0001")) == 2
    hotel = await close_batch(issuer.conn, issuer.terminals["hotel"])
    assert hotel.rc == "00" and hotel.host == BatchTotals(0, 0, 1, 7_00)


async def test_out_of_balance_answers_95_with_our_totals_and_still_closes(issuer: Issuer) -> None:
    shop = await a_day_at_the_shop(issuer)
    honest = shop.batch.totals()
    shop.batch.items.popitem()  # the terminal lost its last sale
    request = reconciliation_request(shop)
    answer = await issuer.send(request)
    assert answer["t"] == "0510" and answer["39"] == "95"
    assert BatchTotals.from_fields(answer) == honest
    assert parse_net_amount(answer["97"]) == honest.debits_minor - honest.credits_minor
    assert answer["60"] == request["60"] and answer["50"] == "978"
    # The terminal retransmits the same 0500: the same answer, and no second batch.
    again = await issuer.send(dict(request))
    assert {k: again[k] for k in ("39", "74", "76", "86", "88", "97")} == {k: answer[k] for k in ("39", "74", "76", "86", "88", "97")}
    [closed] = await ledger.terminal_batches.list_closed(issuer.running.store, "SHOP0001")
    assert closed.rc == "95" and closed.terminal != closed.host
    # The batch was closed: what came before it is not counted again.
    shop.batch.items.clear()
    assert (await close_batch(issuer.conn, shop)).rc == "00"


async def test_bad_batch_totals_get_a_clear_answer_and_close_nothing(issuer: Issuer) -> None:
    shop = await a_day_at_the_shop(issuer)
    request = reconciliation_request(shop)
    missing = {k: v for k, v in request.items() if k != "88"}
    assert (await issuer.send(missing))["39"] == "30"
    inconsistent = {**reconciliation_request(shop), "97": "C0000000000000001"}
    assert (await issuer.send(inconsistent))["39"] == "30"
    stranger = {**reconciliation_request(shop), "41": "NOSUCH01"}
    assert (await issuer.send(stranger))["39"] == "03"
    no_currency = {k: v for k, v in reconciliation_request(shop).items() if k != "50"}
    assert (await issuer.send(no_currency))["39"] == "30"
    assert await ledger.terminal_batches.list_closed(issuer.running.store, "SHOP0001") == []
    assert (await close_batch(issuer.conn, shop)).rc == "00"


async def test_sales_during_the_close_are_counted_exactly_once(issuer: Issuer) -> None:
    """The close claims what was committed before it; whatever commits after goes to the next batch."""
    shop, ivan = issuer.terminals["shop"], issuer.cards["ivan"]
    port = issuer.running.port
    conns = [await TerminalConnection.connect("127.0.0.1", port, timeout_s=10.0, terminals=[shop]) for _ in range(4)]
    approved = 0
    # One terminal is one device: its sales go one at a time (its DUKPT counter only moves forward).
    device = asyncio.Lock()

    async def sell(conn: TerminalConnection, n: int) -> None:
        nonlocal approved
        for _ in range(n):
            async with device:
                request = shop.card_request(ivan, 1_00, entry="magstripe")
                if (await conn.request(request))["39"] == "00":
                    approved += 1
            await asyncio.sleep(0)

    try:
        sellers = [asyncio.create_task(sell(c, 15)) for c in conns]
        await asyncio.sleep(0.05)
        async with device:
            first = await issuer.send(reconciliation_request(shop))
        await asyncio.gather(*sellers)
        second = await issuer.send(reconciliation_request(shop))
    finally:
        for c in conns:
            await c.close()
    assert first["39"] in ("00", "95") and second["39"] in ("00", "95")
    counted = int(first["76"]) + int(second["76"])
    assert counted == approved == 60
    assert int(first["88"]) + int(second["88"]) == 60_00

"""Spending controls in the engine: 61 amount, 65 count, 57 not permitted, 62 restricted; counted atomically."""

from __future__ import annotations

import asyncio

from processor.issuing.controls import CardControls, set_controls
from processor.ledger import invariants
from processor.server import running_engine
from terminal_sim.iso_client import TerminalConnection


async def _controls(issuer, name: str, **values) -> None:
    await issuer.running.store.run_write(set_controls, issuer.cards[name].card_id, CardControls(**values))


async def test_each_control_answers_its_code_and_changes_count_from_the_next_authorization(issuer):
    shop, ivan = issuer.terminals["shop"], issuer.cards["ivan"]
    send = lambda amount, **kw: issuer.send(shop.card_request(ivan, amount, entry="magstripe", **kw))  # noqa: E731

    await _controls(issuer, "ivan", per_transaction_minor=50_00)
    assert (await send(60_00))["39"] == "61"
    assert (await send(40_00))["39"] == "00"

    await _controls(issuer, "ivan", daily_count=2)  # the 40.00 above counted nothing: no daily limit was set then
    assert [(await send(1_00))["39"] for _ in range(3)] == ["00", "00", "65"]

    await _controls(issuer, "ivan", blocked_categories=("groceries",))
    assert (await send(1_00))["39"] == "57"
    await _controls(issuer, "ivan", blocked_mccs=("5411",))
    assert (await send(1_00))["39"] == "57"
    await _controls(issuer, "ivan", atm=False)
    assert (await send(1_00, processing_code="010000"))["39"] == "57"
    await _controls(issuer, "ivan", ecommerce=False)
    assert (await issuer.send(shop.card_request(ivan, 1_00, entry="manual", cvv2=ivan.cvv2)))["39"] == "57"

    await _controls(issuer, "ivan", allowed_countries=("FR",))
    assert (await send(1_00))["39"] == "62"  # the shop is in Berlin, DE
    await _controls(issuer, "ivan", abroad=False)
    assert (await send(1_00))["39"] == "00"
    shop.name_location = f"{'Boulangerie':<23}{'Paris':<13}FR"
    assert (await send(1_00))["39"] == "62"

    await _controls(issuer, "ivan")  # nothing limited: the very next authorization is approved
    assert (await send(60_00))["39"] == "00"
    assert (await invariants.check(issuer.running.store)) == []


async def test_a_declined_or_partial_authorization_gives_its_count_back(issuer):
    shop, bob = issuer.terminals["shop"], issuer.cards["bob"]  # bob has 10.00
    await _controls(issuer, "bob", daily_minor=20_00, daily_count=2)
    assert (await issuer.send(shop.card_request(bob, 15_00, entry="magstripe")))["39"] == "51"
    partial = await issuer.send(shop.card_request(bob, 15_00, entry="magstripe", partial_ok=True))
    assert partial["39"] == "10" and int(partial["4"]) == 10_00
    # 10.00 approved of the day's 20.00 and one of two payments; the funds are now what stops the next one
    assert (await issuer.send(shop.card_request(bob, 11_00, entry="magstripe")))["39"] == "61"


async def test_concurrent_purchases_on_two_engines_never_pass_a_daily_limit_together(issuer):
    # One terminal pipelines ten purchases over two connections to two engine processes at once: its KSNs
    # are numbered in order but reach the store in any order, and each is accepted once (none is taken for
    # a replay, 63); the daily limit lets exactly three through.
    shop, ivan = issuer.terminals["shop"], issuer.cards["ivan"]
    await _controls(issuer, "ivan", daily_minor=100_00)
    async with running_engine(issuer.settings) as second:
        other = await TerminalConnection.connect("127.0.0.1", second.port, timeout_s=10.0,
                                                 terminals=list(issuer.terminals.values()))
        try:
            requests = [shop.card_request(ivan, 30_00, entry="magstripe") for _ in range(10)]
            answers = await asyncio.gather(*(
                (issuer.conn if n % 2 else other).request(r) for n, r in enumerate(requests)
            ))
        finally:
            await other.close()
    codes = sorted(a["39"] for a in answers)
    assert codes == ["00"] * 3 + ["61"] * 7
    view = await issuer.account("ivan")
    assert view.ledger_minor == 200_00 - 90_00

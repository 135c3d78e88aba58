"""An acquiring network proves who it is: every message MACed under its own DUKPT key, verified by the HSM
before any field is trusted; its terminals and merchants are the ones registered for it; answers MACed."""

from __future__ import annotations

from typing import Any

import pytest
from engine_helpers import raw_exchange, recorded
from settlement_helpers import euronet

from processor.errors import InvalidRequest
from processor.iso8583 import encode
from processor.iso8583.mac import encode_for_mac
from processor.ledger.apply import KSN_WINDOW
from processor.settlement.config import add_network, add_network_merchant
from terminal_sim.pos import PosTerminal


async def test_the_networks_messages_and_answers_are_maced_under_its_own_key(issuer: Any) -> None:
    network = await euronet(issuer)
    day = await network.run(issuer.conn, [issuer.cards["ada"]], 3)
    assert len(day.approved) == 3, day.codes
    for _, answer, _ in day.approved:
        assert answer["_authentic"] is True and "64" in answer
    assert (await issuer.account("ada")).held_minor == sum(int(r["4"]) for r, _, _ in day.approved)


async def test_missing_forged_and_tampered_network_macs_get_63_and_change_nothing(issuer: Any) -> None:
    network = await euronet(issuer)
    ada = issuer.cards["ada"]
    before = await recorded(issuer)
    request = network.authorization(ada, 40_00, 0)
    stranger = PosTerminal(terminal_id="NETWORK", merchant_id="", ipek="0123456789ABCDEFFEDCBA9876543210",
                           initial_ksn=network.signer.initial_ksn)
    forged, _ = stranger.sign(request)  # the network's KSN, another key
    signed, _ = network.signer.sign(request)
    tampered = signed.replace(request["4"].encode(), b"000000400001")
    cases = {
        "no MAC at all": encode(request),
        "a zero MAC": encode_for_mac({**request, "53": network.signer.next_ksn()}),
        "a MAC under another key": forged,
        "an amount changed after signing": tampered,
    }
    for what, payload in cases.items():
        answer = await raw_exchange(issuer, payload)
        assert answer["39"] == "63", what
        assert "64" not in answer and "128" not in answer, what
    assert await recorded(issuer) == before
    account = await issuer.account("ada")
    assert (account.ledger_minor, account.held_minor) == (500_00, 0)


async def test_replayed_network_messages_change_nothing(issuer: Any) -> None:
    network = await euronet(issuer)
    ada = issuer.cards["ada"]
    captured, _ = network.signer.sign(network.authorization(ada, 25_00, 0))
    first = await raw_exchange(issuer, captured)
    again = await raw_exchange(issuer, captured)
    assert (first["39"], again["39"], again["38"]) == ("00", "00", first["38"])
    assert (await issuer.account("ada")).held_minor == 25_00
    # Two messages signed in order arrive out of order: each counter is taken once, and the earlier message
    # sent again gets its first answer and nothing more.
    early, _ = network.signer.sign(network.authorization(ada, 11_00, 0))
    late, _ = network.signer.sign(network.authorization(ada, 12_00, 0))
    assert (await raw_exchange(issuer, late))["39"] == "00"
    first_early = await raw_exchange(issuer, early)
    again_early = await raw_exchange(issuer, early)
    assert (first_early["39"], again_early["38"]) == ("00", first_early["38"])
    assert (await issuer.account("ada")).held_minor == 25_00 + 12_00 + 11_00
    # A counter never used but further behind the highest than the replay window reaches: refused.
    behind = network.signer.dukpt_counter
    network.signer.dukpt_counter += KSN_WINDOW + 10
    ahead, _ = network.signer.sign(network.authorization(ada, 1_00, 0))
    assert (await raw_exchange(issuer, ahead))["39"] == "00"
    network.signer.dukpt_counter = behind
    stale, _ = network.signer.sign(network.authorization(ada, 2_00, 0))
    assert (await raw_exchange(issuer, stale))["39"] == "63"
    assert (await issuer.account("ada")).held_minor == 25_00 + 12_00 + 11_00 + 1_00


async def test_a_network_speaks_only_for_its_registered_merchants(issuer: Any) -> None:
    network = await euronet(issuer, merchants=2)
    ada, shop = issuer.cards["ada"], issuer.terminals["shop"]
    before = await recorded(issuer)
    request = network.authorization(ada, 10_00, 0)
    unregistered = {**request, "41": "NETFUEL1", "42": "FUEL00000000007"}  # one of its merchants it never registered
    other_merchant = {**request, "42": "CAFE00000000001"}  # a registered terminal with another merchant's id
    ours = {**request, "41": shop.terminal_id, "42": shop.merchant_id}  # our own shop, as if behind the network
    for what, fields in {"unregistered": unregistered, "other merchant": other_merchant, "our terminal": ours}.items():
        payload, _ = network.signer.sign(fields)
        assert (await raw_exchange(issuer, payload))["39"] == "03", what
    # Our own terminal cannot pose as the network (it has not the network's key), nor the network as ours.
    posing, _ = shop.sign({**shop.card_request(ada, 10_00, entry="magstripe"), "32": "400001"})
    assert (await raw_exchange(issuer, posing))["39"] == "63"
    as_ours, _ = network.signer.sign({**request, "32": "000001"})
    assert (await raw_exchange(issuer, as_ours))["39"] == "03"
    assert await recorded(issuer) == before
    assert (await issuer.account("ada")).held_minor == 0


async def test_a_network_registered_once_keeps_its_key(issuer: Any) -> None:
    await euronet(issuer)
    store = issuer.running.store
    with pytest.raises(InvalidRequest, match="already registered"):
        await add_network(store, issuer.running.hsm, issuer.running.engine.keys, "400001", "EuroNet again")
    with pytest.raises(InvalidRequest, match="not registered"):
        await add_network_merchant(store, "400002", terminal_id="X1", merchant_id="X0000001", mcc="5411")
    with pytest.raises(InvalidRequest, match="already registered"):
        await add_network_merchant(store, "400001", terminal_id="SHOP0001", merchant_id="X0000001", mcc="5411")

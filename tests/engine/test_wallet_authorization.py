"""Wallet payment tokens end to end: a phone taps with its device token and token cryptogram; the
issuer maps the token to the card, enforces the token's domain and lifecycle, and answers with the
token, never the PAN."""

from __future__ import annotations

import pytest

from processor import issuing, ledger
from processor.issuing import load_issuer_keys
from processor.issuing.personalization import form_bureau_key
from processor.tokenization import delete_token, provision_token, replace_card, resume_token, suspend_token
from terminal_sim.bureau import open_record, read_record, transport_key_from_components
from terminal_sim.emv.card import VirtualCard
from terminal_sim.nfc import ContactlessTerminal
from terminal_sim.pos import CardData


@pytest.fixture
async def wallet(issuer, tmp_path):
    """A phone holding a token of ada's card, and a way to tap it."""
    store, hsm = issuer.running.store, issuer.running.hsm
    keys = await load_issuer_keys(store, hsm)
    ceremony = await form_bureau_key(store, hsm)
    transport_key = transport_key_from_components(ceremony["components"])

    async def provision(**restrictions):
        token = await provision_token(
            store, hsm, keys, card_id=issuer.cards["ada"].card_id, wallet="phone", device_id="DEVICE-1",
            wallet_dir=str(tmp_path), **restrictions,
        )
        card = VirtualCard(open_record(read_record(token["wallet_file"]), transport_key))
        return token, card

    async def tap(card, amount_minor=12_00, terminal="shop"):
        reader = ContactlessTerminal(issuer.terminals[terminal])
        return await reader.tap_wallet(issuer.conn, card.process_apdu, amount_minor)

    issuer.provision, issuer.tap, issuer.keys = provision, tap, keys
    return issuer


async def test_wallet_tap_is_approved_and_answered_with_the_token(wallet):
    token, phone = await wallet.provision()
    assert token["token"][:6] == "489537" and token["token"] != wallet.cards["ada"].pan
    result = await wallet.tap(phone)
    assert (result.rc, result.cryptogram) == ("00", "TC")
    assert result.answer["2"] == token["token"]
    assert wallet.cards["ada"].pan not in str(result.answer)
    assert (await wallet.account("ada")).ledger_minor == 500_00 - 12_00


async def test_contactless_only_token_keyed_in_manually_is_not_permitted(wallet):
    token, _ = await wallet.provision()
    keyed = CardData(pan=token["token"], expiry=token["expiry"], track2="", cvv2="123")
    answer = await wallet.send(wallet.terminals["shop"].card_request(keyed, 5_00, entry="manual", cvv2="123"))
    assert answer["39"] == "57"


async def test_merchant_category_binding(wallet):
    _, phone = await wallet.provision(mcc_allow=("5812",))
    assert (await wallet.tap(phone)).rc == "57"  # the shop is a 5411 grocery


async def test_lifecycle_stops_and_restarts_the_token_at_once(wallet):
    token, phone = await wallet.provision()
    await suspend_token(wallet.running.store, token["id"], reason="phone reported lost")
    assert (await wallet.tap(phone)).rc == "62"
    await resume_token(wallet.running.store, token["id"], reason="phone found")
    assert (await wallet.tap(phone)).rc == "00"
    await delete_token(wallet.running.store, token["id"], reason="wallet removed")
    assert (await wallet.tap(phone)).rc == "14"


async def test_closing_the_card_stops_its_tokens(wallet):
    _, phone = await wallet.provision()
    await issuing.cards.set_status(wallet.running.store, wallet.cards["ada"].card_id, "closed")
    assert (await wallet.tap(phone)).rc == "62"


async def test_a_replaced_card_keeps_the_wallet_working(wallet):
    token, phone = await wallet.provision()
    replaced = await replace_card(wallet.running.store, wallet.running.hsm, wallet.keys, wallet.cards["ada"].card_id, pin="1234")
    assert token["id"] in replaced["repointed_token_ids"]
    old = await wallet.send(wallet.terminals["shop"].card_request(wallet.cards["ada"], 1_00, entry="magstripe"))
    assert old["39"] == "62"  # the old plastic is closed
    assert (await wallet.tap(phone)).rc == "00"  # the phone carries on, now on the new card


async def test_replayed_token_cryptogram_is_declined(wallet):
    _, phone = await wallet.provision()
    first = await wallet.tap(phone)
    assert first.rc == "00"
    replay = dict(first.request)
    replay["11"] = wallet.terminals["shop"].next_stan()
    assert (await wallet.send(replay))["39"] == "82"


async def test_load_generator_wallet_kind(wallet, tmp_path):
    from terminal_sim.chip_pos import ChipCard
    from terminal_sim.load import run_load

    token, phone = await wallet.provision()
    await ledger.accounts.deposit(wallet.running.store, wallet.accounts["ada"], 1_000_000_00, reference="load test funding")
    phone_card = ChipCard(phone.profile, card_id=wallet.cards["ada"].card_id, is_wallet=True)
    result = await run_load(
        "127.0.0.1", wallet.running.port, [wallet.terminals["shop"]], [], connections=2, seconds=1.0,
        mix={"wallet": 1}, chip_cards=[phone_card], seed=7,
    )
    summary = result.summary()
    assert summary["count"] > 5 and set(summary["codes"]) == {"00"}
    assert summary["by_kind"]["wallet"]["count"] == summary["count"]

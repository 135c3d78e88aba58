"""Wallet payment tokens: provisioning, look-up by fingerprint, lifecycle, card replacement, ATC replay."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from processor import issuing, ledger, tokenization
from processor.errors import InvalidRequest
from processor.issuing.pan import luhn_valid
from processor.auth.answers import LEDGER_ANSWERS
from processor.ledger import Store, ops
from processor.ledger import StoreError
from processor.tokenization import (
    delete_token,
    provision_token,
    replace_card,
    resume_token,
    suspend_token,
)
from processor.tokenization.wallet import DEFAULT_TOKEN_BIN, token_details


async def fingerprints(hsm: Any, number: str) -> list[str]:
    return [fp for _, fp in await hsm.fingerprint_pan(number)]


async def test_provisioned_token_is_found_with_its_card_in_one_lookup(store, hsm, keys, new_card):
    card = await new_card()
    tok = await provision_token(store, hsm, keys, card_id=card.id, wallet="phone", device_id="DEV-1",
                                mcc_allow=("5411", "5812"), merchant_allow=("GROCERY000001",))
    found = await tokenization.tokens.find_by_fingerprints(store, await fingerprints(hsm, tok["token"]))
    assert found is not None
    token, card_rec = found
    assert (token.token_id, token.card_id, token.status) == (tok["id"], card.id, "active")
    assert token.allowed_entry_modes == ("07",)  # contactless chip only by default
    assert token.mcc_allow == ("5411", "5812") and token.merchant_allow == ("GROCERY000001",)
    assert token.requestor_id == "40010030273" and token.expiry == tok["expiry"] and token.last_atc is None
    assert token.token_last4 == tok["token"][-4:]
    assert (card_rec.card_id, card_rec.status, card_rec.account_status, card_rec.currency) == (
        card.id, "active", "open", "EUR",
    )
    # The token is not a card number, and the card's number is not a token.
    assert await issuing.cards.find_by_fingerprints(store, await fingerprints(hsm, tok["token"])) is None
    assert await tokenization.tokens.find_by_fingerprints(store, await fingerprints(hsm, card.pan)) is None


async def test_token_number_is_luhn_valid_from_the_token_bin_and_unlike_the_card(store, hsm, keys, new_card):
    card = await new_card()
    tokens = [
        await provision_token(store, hsm, keys, card_id=card.id, wallet="phone", device_id=f"D{i}")
        for i in range(3)
    ]
    for tok in tokens:
        assert len(tok["token"]) == 16 and luhn_valid(tok["token"])
        assert tok["token"].startswith(DEFAULT_TOKEN_BIN) and not tok["token"].startswith(card.pan[:6])
        assert tok["token"] != card.pan and tok["psn"] == "00"
    assert len({t["token"] for t in tokens}) == 3
    listed = await tokenization.tokens.list_for_card(store, card.id)
    assert [v.id for v in listed] == [t["id"] for t in tokens]
    assert all(v.token_bin == DEFAULT_TOKEN_BIN for v in listed)


async def test_token_bin_overlapping_the_card_bin_is_refused(store, hsm, keys, new_card):
    card = await new_card()
    await issuing.config.put(store, "token.bin", card.pan[:6])
    with pytest.raises(InvalidRequest, match="overlaps the card BIN"):
        await provision_token(store, hsm, keys, card_id=card.id, wallet="phone", device_id="D")


async def test_only_an_active_card_gets_a_token_and_bad_restrictions_are_refused(store, hsm, keys, new_card):
    card = await new_card()
    with pytest.raises(InvalidRequest, match="entry modes"):
        await provision_token(store, hsm, keys, card_id=card.id, wallet="phone", device_id="D", entry_modes=("7",))
    with pytest.raises(InvalidRequest, match="MCC"):
        await provision_token(store, hsm, keys, card_id=card.id, wallet="phone", device_id="D", mcc_allow=("54a1",))
    await issuing.cards.set_status(store, card.id, "frozen")
    with pytest.raises(InvalidRequest, match="frozen"):
        await provision_token(store, hsm, keys, card_id=card.id, wallet="phone", device_id="D")
    assert await tokenization.tokens.list_for_card(store, card.id) == []


async def test_lifecycle_moves_are_validated_recorded_and_seen_by_the_lookup(store, hsm, keys, new_card):
    card = await new_card()
    tok = await provision_token(store, hsm, keys, card_id=card.id, wallet="phone", device_id="D")
    fps = await fingerprints(hsm, tok["token"])

    async def status() -> str:
        found = await tokenization.tokens.find_by_fingerprints(store, fps)
        assert found is not None
        return found[0].status

    await suspend_token(store, tok["id"], "phone lost")
    assert await status() == "suspended"
    await resume_token(store, tok["id"])
    assert await status() == "active"
    with pytest.raises(StoreError, match="active and cannot become active"):
        await resume_token(store, tok["id"])
    await delete_token(store, tok["id"], "customer request")
    assert await status() == "deleted"
    for move in (resume_token, suspend_token, delete_token):
        with pytest.raises(StoreError, match="deleted and cannot become"):
            await move(store, tok["id"])
    events = await tokenization.tokens.events(store, tok["id"])
    assert [e["event"] for e in events] == ["provisioned", "suspended", "resumed", "deleted"]
    assert events[1]["detail"] == "phone lost"
    details = await token_details(store, tok["id"])
    assert details["status"] == "deleted" and [e["event"] for e in details["events"]][-1] == "deleted"
    assert tok["token"] not in repr(details)


async def test_closing_the_card_shows_at_once_on_the_token_lookup(store, hsm, keys, new_card):
    card = await new_card()
    tok = await provision_token(store, hsm, keys, card_id=card.id, wallet="phone", device_id="D")
    await issuing.cards.set_status(store, card.id, "closed")
    token, card_rec = await tokenization.tokens.find_by_fingerprints(store, await fingerprints(hsm, tok["token"]))
    assert token.status == "active" and card_rec.status == "closed"


async def test_replacing_a_lost_card_moves_its_live_tokens_to_the_new_card(store, hsm, keys, new_card):
    card = await new_card()
    live = await provision_token(store, hsm, keys, card_id=card.id, wallet="phone", device_id="D1")
    paused = await provision_token(store, hsm, keys, card_id=card.id, wallet="watch", device_id="D2")
    gone = await provision_token(store, hsm, keys, card_id=card.id, wallet="tablet", device_id="D3")
    await suspend_token(store, paused["id"])
    await delete_token(store, gone["id"])
    await issuing.cards.set_status(store, card.id, "lost")

    result = await replace_card(store, hsm, keys, card.id, pin="4321")
    new_id = result["id"]
    assert result["pan"] != card.pan and luhn_valid(result["pan"]) and result["cvv2"]
    assert result["account_id"] == card.account_id and result["replaced_card_id"] == card.id
    assert result["repointed_token_ids"] == [live["id"], paused["id"]]
    old = await issuing.cards.get(store, card.id)
    assert (old.status, old.replaced_by_card_id) == ("closed", new_id)
    assert (await issuing.cards.get(store, new_id)).status == "active"

    token, card_rec = await tokenization.tokens.find_by_fingerprints(store, await fingerprints(hsm, live["token"]))
    assert (token.card_id, card_rec.card_id, card_rec.status, token.status) == (new_id, new_id, "active", "active")
    token, _ = await tokenization.tokens.find_by_fingerprints(store, await fingerprints(hsm, paused["token"]))
    assert (token.card_id, token.status) == (new_id, "suspended")
    token, card_rec = await tokenization.tokens.find_by_fingerprints(store, await fingerprints(hsm, gone["token"]))
    assert (token.card_id, card_rec.status) == (card.id, "closed")  # a deleted token stays behind
    assert [e["event"] for e in await tokenization.tokens.events(store, live["id"])] == ["provisioned", "repointed"]
    assert [e["event"] for e in await tokenization.tokens.events(store, gone["id"])] == ["provisioned", "deleted"]
    with pytest.raises(InvalidRequest, match="already replaced"):
        await replace_card(store, hsm, keys, card.id, pin=None)


def _hold(card: Any, token_id: int | None, atc: int, n: int) -> ops.PlaceHold:
    return ops.PlaceHold(
        idem_key=f"tok-atc-{card.id}-{n}", mti="0100", terminal_id="T0000001", stan=f"{n:06d}", rrn=f"{n:012d}",
        card_id=card.id, account_id=card.account_id, amount_minor=10_00, currency="EUR", atc=atc,
        token_id=token_id, expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(days=7), answer_codes=LEDGER_ANSWERS,
    )


async def test_token_cryptogram_atc_is_claimed_on_the_token_not_the_card(store, hsm, keys, new_card):
    card = await new_card()
    tok = await provision_token(store, hsm, keys, card_id=card.id, wallet="phone", device_id="D")
    assert (await store.submit(_hold(card, tok["id"], atc=7, n=1))).rc == "00"
    replay = await store.submit(_hold(card, tok["id"], atc=7, n=2))
    assert replay.rc == "82" and "token" in replay.reason
    # The physical card's own chip counter is separate: ATC 7 from the card is still fresh.
    assert (await store.submit(_hold(card, None, atc=7, n=3))).rc == "00"
    assert (await tokenization.tokens.get(store, tok["id"])).last_atc == 7
    assert (await issuing.cards.get(store, card.id)).last_atc == 7
    assert (await store.submit(_hold(card, tok["id"], atc=8, n=4))).rc == "00"
    assert (await ledger.accounts.get(store, card.account_id)).available_minor == 70_00
    assert await ledger.invariants.check(store) == []


async def test_no_clear_token_or_pan_in_the_sqlite_files(sqlite_url, hsm, tmp_path: Path):
    from processor.issuing import issue_card
    from processor.issuing.keys import ensure_issuer_keys

    store = await Store.open(sqlite_url)
    try:
        keys = await ensure_issuer_keys(store, hsm)
        holder = await issuing.cardholders.create(store, "Ada", "ada")
        account = await ledger.accounts.open_account(store, holder, "checking", "EUR")
        card = await issue_card(store, hsm, keys, account_id=account, pin="1234")
        tok = await provision_token(store, hsm, keys, card_id=card.id, wallet="phone", device_id="D")
        replaced = await replace_card(store, hsm, keys, card.id, pin="1234")
    finally:
        await store.close()
    files = list(tmp_path.glob("*.db*"))
    assert files
    data = b"".join(f.read_bytes() for f in files)
    for secret in (tok["token"], card.pan, replaced["pan"], card.track2):
        assert secret.encode() not in data
    assert tok["token"][-4:].encode() in data  # the scan does see the database's text


async def test_two_replacements_at_once_leave_one_live_card(store, hsm, keys, new_card):
    import asyncio

    card = await new_card()
    tok = await provision_token(store, hsm, keys, card_id=card.id, wallet="phone", device_id="D")
    results = await asyncio.gather(
        *(replace_card(store, hsm, keys, card.id, pin=None) for _ in range(2)), return_exceptions=True
    )
    winners = [r for r in results if isinstance(r, dict)]
    assert len(winners) == 1 and all(isinstance(r, (StoreError, InvalidRequest)) for r in results if r not in winners)
    live = [c for c in await issuing.cards.list_for_account(store, card.account_id) if c.status == "active"]
    assert [c.card_id for c in live] == [winners[0]["id"]]
    token, _ = await tokenization.tokens.find_by_fingerprints(store, await fingerprints(hsm, tok["token"]))
    assert token.card_id == winners[0]["id"]

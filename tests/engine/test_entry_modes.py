"""Deny by default: a card request approves only with the proof its POS entry mode (DE 22) requires."""

from __future__ import annotations

from pathlib import Path

import pytest
from engine_helpers import Issuer

from processor.auth.entry_modes import ENTRY_MODES, markdown_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_shows_the_engines_entry_mode_table() -> None:
    assert markdown_table() in README.read_text(encoding="utf-8")


def _bare(issuer: Issuer, mti: str, entry_mode: str | None) -> dict:
    """A request with a real card number and expiry and nothing that proves the card is there."""
    shop, ada = issuer.terminals["shop"], issuer.cards["ada"]
    request = shop.card_request(ada, 5_00, mti=mti, entry="manual")
    request.pop("48", None)
    if entry_mode is None:
        request.pop("22")
    else:
        request["22"] = entry_mode + "1"
    return request


async def test_a_card_number_alone_never_approves_whatever_the_entry_mode(issuer: Issuer) -> None:
    modes: list[str | None] = [f"{n:02d}" for n in range(100)] + [None]
    for mti in ("0100", "0200"):
        answers = {mode: await issuer.send(_bare(issuer, mti, mode)) for mode in modes}
        approved = {mode: a["39"] for mode, a in answers.items() if a["39"] in ("00", "10")}
        assert approved == {}, mti
        assert {a["39"] for a in answers.values()} == {"58"}, mti
    view = await issuer.account("ada")
    assert (view.ledger_minor, view.available_minor, view.holds) == (500_00, 500_00, [])


async def test_each_accepted_mode_declines_without_its_data(issuer: Issuer) -> None:
    shop, ada = issuer.terminals["shop"], issuer.cards["ada"]
    keyed_without_expiry = shop.card_request(ada, 5_00, entry="manual", cvv2=ada.cvv2)
    keyed_without_expiry.pop("14")
    assert (await issuer.send(keyed_without_expiry))["39"] == "58"
    chip_without_cryptogram = shop.card_request(ada, 5_00, entry="chip")
    assert "55" not in chip_without_cryptogram
    assert (await issuer.send(chip_without_cryptogram))["39"] == "58"
    tap_without_cryptogram = shop.card_request(ada, 5_00, entry="contactless")
    assert (await issuer.send(tap_without_cryptogram))["39"] == "58"
    swipe_without_track = shop.card_request(ada, 5_00, entry="magstripe")
    swipe_without_track.pop("35")
    swipe_without_track["2"] = ada.pan
    assert (await issuer.send(swipe_without_track))["39"] == "58"
    assert (await issuer.account("ada")).ledger_minor == 500_00
    assert set(ENTRY_MODES) == {"01", "02", "05", "07", "80", "90"}


async def test_the_expiry_must_match_wherever_the_mode_carries_it(issuer: Issuer) -> None:
    shop, ada = issuer.terminals["shop"], issuer.cards["ada"]
    keyed = shop.card_request(ada, 5_00, entry="manual", cvv2=ada.cvv2)
    keyed["14"] = "9912"
    assert (await issuer.send(keyed))["39"] == "54"
    swiped = shop.card_request(ada, 5_00, entry="magstripe")
    pan, rest = swiped["35"].split("=")
    swiped["35"] = f"{pan}=9912{rest[4:]}"
    assert (await issuer.send(swiped))["39"] == "54"
    assert (await issuer.account("ada")).ledger_minor == 500_00


async def test_pan_and_track_must_name_the_same_card(issuer: Issuer) -> None:
    shop, ada, grace = issuer.terminals["shop"], issuer.cards["ada"], issuer.cards["grace"]
    request = shop.card_request(grace, 5_00, entry="magstripe")
    request["2"] = ada.pan
    assert (await issuer.send(request))["39"] == "30"
    assert (await issuer.account("ada")).ledger_minor == 500_00
    assert (await issuer.account("grace")).ledger_minor == 300_00


@pytest.mark.parametrize("processing_code", ["400000", "260000", "500000", "990000", "003000", "000010", "000099"])
async def test_unknown_processing_codes_are_refused_and_move_nothing(issuer: Issuer, processing_code: str) -> None:
    shop, ada = issuer.terminals["shop"], issuer.cards["ada"]
    for mti in ("0100", "0200"):
        answer = await issuer.send(shop.card_request(ada, 5_00, mti=mti, processing_code=processing_code, entry="magstripe"))
        assert answer["39"] == "12", (mti, processing_code)
    # An advice is acknowledged whatever it says; an unknown processing code in it moves nothing either.
    await issuer.send(shop.card_request(ada, 5_00, mti="0120", processing_code=processing_code, entry="magstripe"))
    view = await issuer.account("ada")
    assert (view.ledger_minor, view.available_minor, view.holds) == (500_00, 500_00, [])

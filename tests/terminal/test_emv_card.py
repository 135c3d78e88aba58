"""Virtual card and terminal kernel in process: cryptograms checked with pyemv."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyemv import ac as pyemv_ac
from pyemv import kd as pyemv_kd

from terminal_sim.emv import tlv
from terminal_sim.emv.card import CardProfile, GarbageCard, GarbageMode, SealError, VirtualCard
from processor.auth.cryptogram import arqc_transaction_data
from terminal_sim.emv.kernel import CardError, complete, read_card
from terminal_sim.vpcd import T0Transmission

# pyemv and psec reach TripleDES through cryptography's deprecated import path.
pytestmark = pytest.mark.filterwarnings("ignore:.*TripleDES.*")



def _read(emv, card, contactless: bool, **kw):
    args = dict(
        contactless=contactless,
        amount_minor=12_345,
        currency_numeric="978",
        country_numeric="250",
        transaction_type="00",
        unpredictable_number=emv.UN,
        date=emv.TXN_DATE,
    )
    args.update(kw)
    return read_card(card.process_apdu, **args)


def _issuer_arqc(emv, cvn: int, t: dict[str, bytes], pan: str | None = None) -> bytes:
    """The issuer's ARQC from DE 55, with pyemv's CVN class (independent of our code)."""
    c = emv.issuer_cvn(cvn, pan or emv.PAN)
    kw = {f"tag_{k.lower()}": t[k] for k in ("9F02", "9F03", "9F1A", "95", "5F2A", "9A", "9C", "9F37", "82", "9F36")}
    if cvn == 10:
        return c.generate_ac(**kw, cvr=t["9F10"][3:7])
    return c.generate_ac(**kw, tag_9f10=t["9F10"])


def _issuer_91(emv, cvn: int, t: dict[str, bytes], *, approve: bool = True, pan: str | None = None, method: int = 1) -> bytes:
    """Issuer authentication data: ARPC method 1 (ARPC ‖ ARC) or, for CVN 18, method 2 (ARPC ‖ CSU)."""
    c = emv.issuer_cvn(cvn, pan or emv.PAN)
    if method == 2:
        csu = bytes.fromhex("00800000" if approve else "00000000")
        return c.generate_arpc(t["9F26"], t["9F36"], csu) + csu
    arc = b"00" if approve else b"05"
    if cvn == 10:
        return c.generate_arpc(t["9F26"], arc) + arc
    sk = pyemv_kd.derive_common_sk(c.icc_mk_ac, t["9F36"] + bytes(6))
    return pyemv_ac.generate_arpc_1(sk, t["9F26"], arc) + arc


@pytest.mark.parametrize("cvn", [10, 18])
@pytest.mark.parametrize("contactless", [False, True], ids=["contact", "contactless"])
def test_arqc_from_de55_verifies_at_the_issuer(emv, cvn, contactless):
    card = VirtualCard(emv.build_profile(cvn, contactless=contactless))
    result = _read(emv, card, contactless)
    assert result.cryptogram_type == "ARQC"
    assert result.pan == emv.PAN and result.psn == "01" and result.expiry == "2812"
    # The issuer sees only DE 55 bytes.
    de55 = tlv.flatten(tlv.parse(result.de55()))
    assert de55["9F26"] == _issuer_arqc(emv, cvn, de55)
    assert de55["9F02"].hex() == "000000012345"
    assert de55["9F37"] == emv.UN
    assert de55["9F10"][2] == cvn
    for tag in ("9F27", "9F36", "95", "9A", "9C", "9F03", "5F2A", "82", "9F1A", "9F33", "9F34", "9F35", "84", "5F34", "57"):
        assert tag in de55, tag


@pytest.mark.parametrize("cvn", [10, 18])
def test_shared_cryptogram_input_recomputes_the_card_arqc(emv, cvn):
    card = VirtualCard(emv.build_profile(cvn))
    tags = tlv.flatten(tlv.parse(_read(emv, card, False).de55()))
    data = arqc_transaction_data(tags, cvn)
    icc_mk = emv.issuer_cvn(cvn).icc_mk_ac
    if cvn == 10:
        mac = pyemv_ac.generate_ac(icc_mk, data, pyemv_ac.PaddingType.VISA, 8)
    else:
        sk = pyemv_kd.derive_common_sk(icc_mk, tags["9F36"] + bytes(6))
        mac = pyemv_ac.generate_ac(sk, data, pyemv_ac.PaddingType.EMV, 8)
    assert mac == tags["9F26"]


@pytest.mark.parametrize("cvn", [10, 18])
def test_good_arpc_gives_tc_bad_arpc_gives_aac(emv, cvn):
    card = VirtualCard(emv.build_profile(cvn))
    result = _read(emv, card, False)
    good = _issuer_91(emv, cvn, result.icc_tags)
    assert complete(card.process_apdu, tlv.encode("91", good), True, read_result=result) == "TC"

    result = _read(emv, card, False)
    bad = bytearray(_issuer_91(emv, cvn, result.icc_tags))
    bad[0] ^= 0x01
    assert complete(card.process_apdu, {"91": bytes(bad)}, True, read_result=result) == "AAC"


@pytest.mark.parametrize("cvn", [10, 18])
def test_issuer_decline_gives_aac_even_with_a_valid_arpc(emv, cvn):
    card = VirtualCard(emv.build_profile(cvn))
    result = _read(emv, card, False)
    declined = _issuer_91(emv, cvn, result.icc_tags, approve=False)
    assert complete(card.process_apdu, {"91": declined}, True, read_result=result) == "AAC"
    result = _read(emv, card, False)
    approved = _issuer_91(emv, cvn, result.icc_tags)
    assert complete(card.process_apdu, {"91": approved}, False, read_result=result) == "AAC"


@pytest.mark.parametrize("approve, outcome", [(True, "TC"), (False, "AAC")])
def test_cvn18_card_with_arpc_method_2_checks_the_card_status_update(emv, approve, outcome):
    card = VirtualCard(emv.build_profile(18, arpc_method=2))
    result = _read(emv, card, False)
    assert result.cdol2.hex().upper().startswith("9108")
    good = _issuer_91(emv, 18, result.icc_tags, approve=approve, method=2)
    assert complete(card.process_apdu, {"91": good}, True, read_result=result) == outcome
    result = _read(emv, card, False)
    method1 = _issuer_91(emv, 18, result.icc_tags)  # the wrong method never verifies
    assert complete(card.process_apdu, {"91": method1}, True, read_result=result) == "AAC"


def test_missing_issuer_authentication_data_gives_aac(emv):
    card = VirtualCard(emv.build_profile(18))
    result = _read(emv, card, False)
    assert complete(card.process_apdu, b"", True, read_result=result) == "AAC"


def test_contactless_complete_follows_the_issuer_without_the_card(emv):
    card = VirtualCard(emv.build_profile(18, contactless=True))
    result = _read(emv, card, True)

    def no_card(apdu: bytes) -> bytes:
        raise AssertionError("a qVSDC card has left the field")

    assert complete(no_card, b"", True, read_result=result) == "TC"
    assert complete(no_card, b"", False, read_result=result) == "AAC"


def test_format1_generate_ac_response_is_understood(emv):
    card = VirtualCard(emv.build_profile(10, gen_ac_format1=True))
    result = _read(emv, card, False)
    assert result.icc_tags["9F26"] == _issuer_arqc(emv, 10, result.icc_tags)
    assert complete(card.process_apdu, {"91": _issuer_91(emv, 10, result.icc_tags)}, True, read_result=result) == "TC"


def test_atc_increments_per_transaction_and_survives_restart(emv, tmp_path):
    state = tmp_path / "card-state.json"
    profile = emv.build_profile(18, atc_start=41)
    card = VirtualCard(profile, state)
    atcs = [int.from_bytes(_read(emv, card, False).icc_tags["9F36"], "big") for _ in range(3)]
    assert atcs == [42, 43, 44]
    restarted = VirtualCard(profile, state)
    assert restarted.process_apdu(bytes.fromhex("80CA9F3600")).hex().upper() == "9F3602002C9000"
    assert int.from_bytes(_read(emv, restarted, False).icc_tags["9F36"], "big") == 45
    assert json.loads(state.read_text())["atc"] == 45
    assert [p.name for p in tmp_path.iterdir()] == ["card-state.json"]


def test_contactless_atc_persists_at_gpo(emv, tmp_path):
    state = tmp_path / "state.json"
    profile = emv.build_profile(10, contactless=True)
    _read(emv, VirtualCard(profile, state), True)
    assert int.from_bytes(_read(emv, VirtualCard(profile, state), True).icc_tags["9F36"], "big") == 2


def _selected(card: VirtualCard, gpo: bool = False) -> VirtualCard:
    assert card.process_apdu(bytes.fromhex("00A4040007A000000003101000"))[-2:] == b"\x90\x00"
    if gpo:
        assert card.process_apdu(bytes.fromhex("80A80000028300"))[-2:] == b"\x90\x00"
    return card


@pytest.mark.parametrize(
    "apdu, state, sw",
    [
        ("00A4", "fresh", "6700"),  # shorter than a header
        ("0012000000", "fresh", "6D00"),  # unknown instruction
        ("A4A4040007A0000000031010", "fresh", "6E00"),  # unknown class
        ("80A4040007A0000000031010", "fresh", "6E00"),  # SELECT in the proprietary class
        ("00A4000007A0000000031010", "fresh", "6A86"),  # SELECT by file id
        ("00A4040007A0000000041010", "fresh", "6A82"),  # AID not on the card
        ("00A404000E325041592E5359532E4444463031", "fresh", "6A82"),  # PPSE on a contact card
        ("00A4040007A000000003", "fresh", "6700"),  # Lc longer than the data
        ("80AE80001D" + "00" * 29, "selected", "6985"),  # GENERATE AC before GPO
        ("00B2010C00", "selected", "6985"),  # READ RECORD before GPO
        ("80A800000483020000", "selected", "6700"),  # PDOL data where the card has no PDOL
        ("80A8010002830000", "selected", "6A86"),  # GPO with P1 set
        ("80A80000029000", "selected", "6A80"),  # GPO data not in template 83
        ("00B2050C00", "gpo", "6A83"),  # record not on the card
        ("00B2010800", "gpo", "6A86"),  # READ RECORD P2 without the SFI marker
        ("80CA9F7F00", "gpo", "6A88"),  # GET DATA of an object the card lacks
        ("80AE80001C" + "00" * 28, "gpo", "6700"),  # CDOL1 data one byte short
        ("80AEC0001D" + "00" * 29, "gpo", "6A86"),  # reference control parameter RFU
        ("0020008008241234FFFFFFFFFF", "gpo", "6A88"),  # VERIFY on a card without offline PIN
    ],
)
def test_bad_commands_get_the_right_status_word(emv, apdu, state, sw):
    card = VirtualCard(emv.build_profile(18))
    if state != "fresh":
        _selected(card, gpo=state == "gpo")
    assert card.process_apdu(bytes.fromhex(apdu))[-2:].hex().upper() == sw


def test_generate_ac_after_completion_is_refused(emv):
    card = VirtualCard(emv.build_profile(18))
    result = _read(emv, card, False)
    complete(card.process_apdu, {"91": _issuer_91(emv, 18, result.icc_tags)}, True, read_result=result)
    cdol2 = tlv.build_dol_data(result.cdol2, {})
    assert card.process_apdu(bytes.fromhex("80AE4000") + bytes([len(cdol2)]) + cdol2) == b"\x69\x85"


def test_pse_directory_and_ppse_directory_name_the_application(emv):
    contact = VirtualCard(emv.build_profile(18))
    fci = tlv.parse(contact.process_apdu(bytes.fromhex("00A404000E315041592E5359532E444446303100"))[:-2])
    assert tlv.find(fci, "88") == b"\x01"
    record = tlv.parse(contact.process_apdu(bytes.fromhex("00B2010C00"))[:-2])
    assert tlv.find(record, "4F").hex().upper() == "A0000000031010"
    assert tlv.find(record, "50") == b"VISA DEBIT"
    assert tlv.find(record, "87") == b"\x01"
    assert contact.process_apdu(bytes.fromhex("00B2020C00")) == b"\x6a\x83"

    contactless = VirtualCard(emv.build_profile(18, contactless=True))
    fci = tlv.parse(contactless.process_apdu(bytes.fromhex("00A404000E325041592E5359532E444446303100"))[:-2])
    assert tlv.find_all(fci, "BF0C") and tlv.find(fci, "4F").hex().upper() == "A0000000031010"
    aid_fci = tlv.parse(contactless.process_apdu(bytes.fromhex("00A4040007A000000003101000"))[:-2])
    assert tlv.find(aid_fci, "9F38") is not None


def test_wrong_le_gets_6cxx_and_t0_cards_hand_out_data_by_get_response(emv):
    card = _selected(VirtualCard(emv.build_profile(18)), gpo=True)
    full = card.process_apdu(bytes.fromhex("00B2010C00"))
    sw = card.process_apdu(bytes.fromhex("00B2010C05"))
    assert sw == bytes([0x6C, len(full) - 2])

    t0 = T0Transmission(VirtualCard(emv.build_profile(18)))
    first = t0.process_apdu(bytes.fromhex("00A4040007A000000003101000"))
    assert first[0] == 0x61
    body = t0.process_apdu(bytes([0x00, 0xC0, 0x00, 0x00, first[1]]))
    assert body[-2:] == b"\x90\x00" and tlv.parse(body[:-2])[0].tag == "6F"
    # The kernel follows 61xx and 6Cxx by itself.
    assert _read(emv, t0, False).cryptogram_type == "ARQC"


def test_offline_pin_tries_count_down_block_and_persist(emv, tmp_path):
    state = tmp_path / "s.json"
    profile = emv.build_profile(18, offline_pin="1234")
    card = _selected(VirtualCard(profile, state), gpo=True)
    wrong = bytes.fromhex("00200080082499 99FFFFFFFFFF".replace(" ", ""))
    assert card.process_apdu(wrong) == b"\x63\xc2"
    assert card.process_apdu(bytes.fromhex("80CA9F1700")).hex().upper() == "9F1701029000"
    assert card.process_apdu(wrong) == b"\x63\xc1"
    restarted = _selected(VirtualCard(profile, state), gpo=True)
    assert restarted.process_apdu(bytes.fromhex("00200080")) == b"\x63\xc1"
    assert restarted.process_apdu(wrong) == b"\x63\xc0"
    right = bytes.fromhex("0020008008241234FFFFFFFFFF")
    assert restarted.process_apdu(right) == b"\x69\x83"


def test_kernel_verifies_offline_pin_and_reports_cvm_results(emv):
    card = VirtualCard(emv.build_profile(18, offline_pin="1234"))
    ok = _read(emv, card, False, offline_pin="1234")
    assert ok.offline_pin_verified is True
    assert ok.icc_tags["9F34"].hex() == "010002"
    bad = _read(emv, card, False, offline_pin="4321")
    assert bad.offline_pin_verified is False
    assert bad.icc_tags["95"][2] & 0x80
    # The cryptogram still covers what the terminal sent.
    assert bad.icc_tags["9F26"] == _issuer_arqc(emv, 18, bad.icc_tags)


def test_device_token_presents_the_token_pan(emv):
    card = VirtualCard(emv.build_profile(18, contactless=True, token=True))
    result = _read(emv, card, True)
    assert result.pan == emv.TOKEN_PAN
    assert result.track2.startswith(emv.TOKEN_PAN + "D")
    assert result.icc_tags["9F26"] == _issuer_arqc(emv, 18, result.icc_tags, emv.TOKEN_PAN)


def test_sealed_profile_round_trips_and_keeps_the_key_out_of_the_file(emv, tmp_path):
    profile = emv.build_profile(18, offline_pin="1234")
    path = tmp_path / "card.json"
    profile.save(path, emv.TRANSPORT_KEY)
    text = path.read_text()
    assert profile.icc_mk_ac.hex() not in text.lower()
    assert '"1234"' not in text
    assert CardProfile.load(path, emv.TRANSPORT_KEY) == profile
    with pytest.raises(SealError, match="icc_mk_ac does not open"):
        CardProfile.load(path, bytes(32))
    tampered = json.loads(text)
    tampered["pan"] = "4761739001010028"
    with pytest.raises(SealError):
        CardProfile.open(tampered, emv.TRANSPORT_KEY)
    in_clear = json.loads(text) | {"icc_mk_ac": profile.icc_mk_ac.hex()}
    with pytest.raises(ValueError, match=r"\['icc_mk_ac'\] must be sealed"):
        CardProfile.open(in_clear, emv.TRANSPORT_KEY)


def test_profile_repr_and_errors_mask_the_pan(emv):
    profile = emv.build_profile(18)
    assert emv.PAN not in repr(profile) and "476173******0010" in repr(profile)
    with pytest.raises(ValueError) as e:
        emv.build_profile(18, expiry="2813")
    assert "476173******0010" in str(e.value) and emv.PAN not in str(e.value)


@pytest.mark.parametrize(
    "mode, contactless, message",
    [
        (GarbageMode.STATUS_6F00, False, "SELECT PSE: card answered SW 6F00"),
        (GarbageMode.SHORT_RESPONSE, False, "SELECT PSE: response of 1 byte(s) has no status word"),
        (GarbageMode.MALFORMED_FCI, True, "SELECT PPSE: malformed TLV in the response"),
        (GarbageMode.MALFORMED_GPO, False, "GET PROCESSING OPTIONS: malformed TLV"),
        (GarbageMode.NO_CRYPTOGRAM, False, "GENERATE AC (first): response lacks 9F26"),
        (GarbageMode.NO_CRYPTOGRAM, True, "GET PROCESSING OPTIONS: response lacks 9F26"),
        (GarbageMode.WRONG_AID, False, "application selection: the card has none"),
    ],
)
def test_garbage_card_raises_card_error_naming_the_command(emv, mode, contactless, message):
    card = GarbageCard(emv.build_profile(18, contactless=contactless), mode)
    with pytest.raises(CardError) as e:
        _read(emv, card, contactless)
    assert str(e.value).startswith(message)


@settings(max_examples=30, deadline=None)
@given(
    cvn=st.sampled_from([10, 18]),
    contactless=st.booleans(),
    amount_minor=st.integers(0, 999_999_999_999),
    un=st.binary(min_size=4, max_size=4),
    tvr=st.binary(min_size=5, max_size=5),
    atc_start=st.integers(0, 65_000),
)
def test_any_transaction_verifies_at_the_issuer_and_completes_with_its_arpc(
    emv, cvn, contactless, amount_minor, un, tvr, atc_start
):
    card = VirtualCard(emv.build_profile(cvn, contactless=contactless, atc_start=atc_start))
    result = _read(emv, card, contactless, amount_minor=amount_minor, unpredictable_number=un, tvr=tvr)
    tags = tlv.flatten(tlv.parse(result.de55()))
    assert int(tags["9F02"].hex()) == amount_minor
    assert int.from_bytes(tags["9F36"], "big") == atc_start + 1
    assert tags["9F26"] == _issuer_arqc(emv, cvn, tags)
    assert complete(card.process_apdu, {"91": _issuer_91(emv, cvn, tags)}, True, read_result=result) == "TC"


def test_exhausted_atc_refuses_further_transactions(emv, tmp_path):
    card = VirtualCard(emv.build_profile(18, atc_start=65_534), tmp_path / "s.json")
    assert _read(emv, card, False).icc_tags["9F36"] == b"\xff\xff"
    with pytest.raises(CardError, match="GENERATE AC \\(first\\): card answered SW 6985"):
        _read(emv, card, False)

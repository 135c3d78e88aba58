"""TR-31 key blocks in and out of the HSM: published examples import, every key type round-trips, the
header's usage, mode of use and exportability are enforced, and keys travel only under dual-control keys."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hsm_sim import Hsm, HsmError
from hsm_sim.crypto import pinblock
from hsm_sim.crypto.des import kcv, tdes_ecb_encrypt
from hsm_sim.keyblock import KEY_TYPES

PAN = "4761739001010010"

# (name, KBPK, KBPK algorithm, key type to import as, key block, key inside). Sources: ANSI X9 TR-31:2018
# annex A.7 and ANSI X9.143:2021 section 8 (the standards' worked examples), and blocks made by a Thales
# payShield 10K, as collected in the test suites of psec and of the tr31 C library.
PUBLISHED = [
    ("TR-31:2018 A.7.2.2 (B, P0)", "DD7515F2BFC17F85CE48F3CA25CB21F6", "TDES", "ZPK",
     "B0080P0TE00E000094B420079CC80BA3461F86FE26EFC4A3B8E4FA4C5F5341176EED7B727B8A248E",
     "3F419E1CB7079442AA37474C2EFBF8B8"),
    ("TR-31:2018 A.7.3.1 (C, B0)", "B8ED59E0A279A295E9F5ED7944FD06B9", "TDES", "BDK",
     "C0096B0TX12S0100KS1800604B120F9292800000BFB9B689CB567E66FC3FEE5AD5F52161FC6545B9D60989015D02155C",
     "EDB380DD340BC2620247D445F5B8D678"),
    ("TR-31:2018 A.7.3.2 (B, B0)", "1D22BF32387C600AD97F9B97A51311AC", "TDES", "BDK",
     "B0104B0TX12S0100KS1800604B120F9292800000BB68BE8680A400D9191AD4ECE45B6E6C0D21C4738A52190E248719E24B433627",
     "E8BC63E5479455E26577F715D587FE68"),
    ("TR-31:2018 A.7.4 (D, P0 AES-128)", "88E1AB2A2E3DD38C1FA039A536500CC8A87AB9D62DC92C01058FA79F44657DE6", "AES", "ZPK",
     "D0112P0AE00E0000B82679114F470F540165EDFBF7E250FCEA43F810D215F8D207E2E417C07156A27E8E31DA05F7425509593D03A457DC34",
     "3F419E1CB7079442AA37474C2EFBF8B8"),
    ("X9.143:2021 8.1 (D, P0 AES-128)", "88E1AB2A2E3DD38C1FA039A536500CC8A87AB9D62DC92C01058FA79F44657DE6", "AES", "TPK",
     "D0144P0AE00E00002C77FA3F4A553BED6E88AE5C172A4166E3D4ACA8E2AC71C158A476FAC12C13C3829DE55D3AB54C48F4C4FEF7AC75E90FC47F1B77E7B19A73ED46E64410082557",
     "3F419E1CB7079442AA37474C2EFBF8B8"),
    ("X9.143:2021 8.4.1 (C, B0)", "B8ED59E0A279A295E9F5ED7944FD06B9", "TDES", "BDK",
     "C0112B0TX12S0100KS1800604B120F929280000042B758A2400AB598AE37782823DAF0BA4BDB0DAFF34915345CA169AE1F976A429EB139E5",
     "EDB380DD340BC2620247D445F5B8D678"),
    ("X9.143:2021 8.4.2 (B, B0)", "1D22BF32387C600AD97F9B97A51311AC", "TDES", "BDK",
     "B0120B0TX12S0100KS1800604B120F929280000015CEB14B76D551F21EC43A75390FA118A98C6CB049E3B9E864A5F4A8B9A5108A6DB5635C95B042D7",
     "E8BC63E5479455E26577F715D587FE68"),
    ("payShield 10K (B, K0)", "EFE0853B256B583D868F251CE99EA1D9", "TDES", "ZMK",
     "B0080K0TN00N00001C414014375212C24995E405B5EE052CB92B67F455EA2680F6751088F9F1C228",
     "5DB50B454F8389ADCE573BE50861F2BF"),
    ("payShield 10K (C, K0)", "EFE0853B256B583D868F251CE99EA1D9", "TDES", "KEK",
     "C0072K0TN00N0000C9B875FF7A5316BF221C09ED52080DE0B45632A4EA9CE87699CB565E",
     "5DB50B454F8389ADCE573BE50861F2BF"),
    ("payShield 10K (D, B0 TDES)", "41" * 32, "AES", "BDK",
     "D0112B0TN00N000037DB9B046B7B0048785690759580ABC3B9842AB4BB7717B49E92528E575785D8123559376A2553B27BE94F054F4E971C",
     "1FA1F7CEC798D91545DA8AE0C7796BD9"),
    ("payShield 10K (D, D0 AES-256)", "41" * 32, "AES", "DEK",
     "D0144D0AN00N0000127862F945C2DED04530FAF7CDBC8B0BA10C7AA79BD5E0C2C5D6AC173BF588E4B19ACF1357178D50EA0AB193228E13958304FC6149632DFDCADF3A5B3D57E814",
     "BE19E6A07A760F10EF8E83A226B63AAD141F463FDDD4F47DB244B4023EC3CACC"),
]


@pytest.fixture
async def hsm():
    h = Hsm.ephemeral()
    yield h
    await h.close()


async def _zmk(hsm: Hsm, clear_hex: str, algorithm: str, key_type: str = "ZMK") -> str:
    """A ZMK with a known value, formed as custodians would: two components whose XOR is the key."""
    other = "0F" * (len(clear_hex) // 2)
    first = bytes(a ^ b for a, b in zip(bytes.fromhex(clear_hex), bytes.fromhex(other))).hex()
    return (await hsm.form_key_from_components(key_type, [first, other], algorithm)).kcv


@pytest.mark.parametrize("name, kbpk, kbpk_algorithm, key_type, block, clear", PUBLISHED, ids=[p[0] for p in PUBLISHED])
async def test_published_key_blocks_import(hsm, name, kbpk, kbpk_algorithm, key_type, block, clear):
    zmk = await _zmk(hsm, kbpk, kbpk_algorithm)
    info = await hsm.import_key(key_type, block, zmk)
    algorithm = {"T": "TDES", "A": "AES"}[block[7]]
    assert info.kcv == kcv(bytes.fromhex(clear), algorithm)
    assert (info.key_type, info.algorithm, info.key_bits) == (key_type, algorithm, len(clear) * 4)
    assert (info.mode_of_use, info.exportability, info.origin) == (block[8], block[11], "imported")


async def test_published_kcvs_match_the_standard(hsm):
    # X9.143 gives 08793E25AB as the AES-CMAC check value of 3F41...F8B8, TR-31 57C409 as its TDES one.
    assert kcv(bytes.fromhex("3F419E1CB7079442AA37474C2EFBF8B8"), "AES") == "08793E"
    assert kcv(bytes.fromhex("3F419E1CB7079442AA37474C2EFBF8B8"), "TDES") == "57C409"


async def test_a_block_is_refused_for_what_it_is_not(hsm):
    name, kbpk, _, _, block, _ = PUBLISHED[0]  # a TDES PIN key, encrypt-only
    zmk = await _zmk(hsm, kbpk, "TDES")
    cases = [
        (lambda: hsm.import_key("CVK", block, zmk), "11", "usage P0"),
        (lambda: hsm.import_key("ZPK", block[:-1] + ("0" if block[-1] != "0" else "1"), zmk), "15", "MAC does not verify"),
        (lambda: hsm.import_key("ZPK", "A0072P0TE00E0000F5161ED902807AF26F1D62263644BD24192FDB3193C730301CEE8701", zmk),
         "15", "version A"),
        (lambda: hsm.import_key("ZPK", PUBLISHED[3][4], zmk), "12", "version B or C"),  # a D block under a TDES ZMK
        (lambda: hsm.import_key("ZPK", "not a key block at all", zmk), "15", "TR-31 version 'n'"),
        (lambda: hsm.import_key("ZPK", "B0016", zmk), "15", "at least 16"),
    ]
    for call, status, words in cases:
        with pytest.raises(HsmError) as info:
            await call()
        assert info.value.code == status and words in info.value.message, info.value


async def test_keys_travel_only_under_keys_formed_under_dual_control(hsm):
    generated = (await hsm.generate_key("ZMK", "AES")).kcv
    cvk = (await hsm.generate_key("CVK")).kcv
    for call in (lambda: hsm.export_key(cvk, generated), lambda: hsm.import_key("ZPK", PUBLISHED[3][4], generated)):
        with pytest.raises(HsmError) as info:
            await call()
        assert info.value.code == "27" and "dual control" in info.value.message
    formed = await _zmk(hsm, PUBLISHED[3][1], "AES")
    assert (await hsm.export_key(cvk, formed)).startswith("D")
    # A ZMK that arrived under a dual-control ZMK carries that trust on.
    partner = await hsm.import_key("ZMK", await _export_from_elsewhere(PUBLISHED[3][1], "AB" * 32), formed)
    assert partner.origin == "imported" and (await hsm.export_key(cvk, partner.kcv)).startswith("D")


async def _export_from_elsewhere(kbpk_hex: str, key_hex: str) -> str:
    """A ZMK as another party's HSM would send it: wrapped under the shared key-block protection key."""
    other = Hsm.ephemeral()
    try:
        shared = await _zmk(other, kbpk_hex, "AES")
        key = await _zmk(other, key_hex, "AES")
        return await other.export_key(key, shared)
    finally:
        await other.close()


async def test_non_exportable_and_weaker_protection_are_refused(hsm):
    zmk_aes = await _zmk(hsm, "41" * 32, "AES")
    imported = await hsm.import_key("BDK", PUBLISHED[9][4], zmk_aes)  # exportability N
    with pytest.raises(HsmError) as info:
        await hsm.export_key(imported.kcv, zmk_aes)
    assert info.value.code == "27" and "non-exportable" in info.value.message
    zmk_tdes = await _zmk(hsm, "0123456789ABCDEFFEDCBA9876543210", "TDES")
    dek = (await hsm.generate_key("DEK", "AES")).kcv
    zpk3 = (await hsm.generate_key("ZPK", "TDES", key_bits=192)).kcv
    for weak in ((dek, zmk_tdes), (zpk3, zmk_tdes)):
        with pytest.raises(HsmError) as info:
            await hsm.export_key(*weak)
        assert info.value.code == "27" and "weaker" in info.value.message
    with pytest.raises(HsmError) as info:
        await hsm.export_key(zmk_aes, zmk_aes)
    assert info.value.code == "27"


# Every key type, algorithm and length the HSM holds, and every block version that may carry it.
SHAPES = [
    (key_type, algorithm, bits)
    for key_type, spec in KEY_TYPES.items()
    for algorithm, lengths in spec.bits.items()
    for bits in lengths
]
KBPKS = [("AES", "D", 256), ("TDES", "B", 192), ("TDES", "C", 192), ("TDES", "B", 128)]
STRENGTH = {("TDES", 128): 80, ("TDES", 192): 112, ("AES", 128): 128, ("AES", 192): 192, ("AES", 256): 256, ("HMAC", 256): 256}


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.sampled_from(SHAPES), kbpk=st.sampled_from(KBPKS), kbpk_clear=st.binary(min_size=32, max_size=32))
async def test_every_key_type_round_trips_between_two_hsms(shape, kbpk, kbpk_clear):
    key_type, algorithm, bits = shape
    kbpk_algorithm, version, kbpk_bits = kbpk
    clear = kbpk_clear[: kbpk_bits // 8].hex()
    sender, receiver = Hsm.ephemeral(), Hsm.ephemeral()
    try:
        out_zmk, in_zmk = await _zmk(sender, clear, kbpk_algorithm), await _zmk(receiver, clear, kbpk_algorithm)
        sent = await sender.generate_key(key_type, algorithm, key_bits=bits)
        if STRENGTH[(algorithm if key_type != "FPK" else "HMAC", bits)] > STRENGTH[(kbpk_algorithm, kbpk_bits)]:
            with pytest.raises(HsmError) as info:
                await sender.export_key(sent.kcv, out_zmk, version=version)
            assert info.value.code == "27"
            return
        block = await sender.export_key(sent.kcv, out_zmk, version=version)
        assert block[0] == version and block[5:7] == KEY_TYPES[key_type].usage
        received = await receiver.import_key(key_type, block, in_zmk)
        assert (received.kcv, received.key_type, received.algorithm, received.key_bits) == (
            sent.kcv, sent.key_type, sent.algorithm, sent.key_bits
        )
        assert (received.mode_of_use, received.exportability) == (sent.mode_of_use, sent.exportability)
    finally:
        await sender.close()
        await receiver.close()


async def test_key_lengths(hsm):
    assert (await hsm.generate_key("BDK", "AES")).key_bits == 128  # X9.24-3 terminals take AES-128
    for bits in (128, 192, 256):
        assert (await hsm.generate_key("BDK", "AES", key_bits=bits)).key_bits == bits
        assert (await hsm.generate_key("TAK", "AES", key_bits=bits)).key_bits == bits
    assert (await hsm.generate_key("ZMK", "TDES", key_bits=192)).key_bits == 192
    assert (await hsm.generate_key("ZPK")).key_bits == 128
    for call in (lambda: hsm.generate_key("CVK", "TDES", key_bits=192), lambda: hsm.generate_key("BDK", "AES", key_bits=100),
                 lambda: hsm.form_key_from_components("TPK", ["11" * 16, "22" * 8])):
        with pytest.raises(HsmError) as info:
            await call()
        assert info.value.code in ("12", "15"), info.value


async def test_mode_of_use_is_enforced(hsm):
    """An encrypt-only PIN key (the TR-31 examples' P0...E) may be translated to, never deciphered."""
    name, kbpk, _, _, block, clear = PUBLISHED[0]
    zmk = await _zmk(hsm, kbpk, "TDES")
    encrypt_only = (await hsm.import_key("ZPK", block, zmk)).kcv
    tpk = (await hsm.form_key_from_components("TPK", ["1C" * 16, "02" * 16])).kcv
    tpk_key = bytes(a ^ b for a, b in zip(bytes.fromhex("1C" * 16), bytes.fromhex("02" * 16)))
    pin_block = tdes_ecb_encrypt(tpk_key, pinblock.encode_pin_block("1234", PAN, 0)).hex()
    under_zpk = await hsm.translate_pin(pin_block, PAN, tpk, 0, encrypt_only, 0)
    assert pinblock.decode_pin_block(_tdes_decrypt(clear, under_zpk), PAN, 0) == "1234"
    with pytest.raises(HsmError) as info:
        await hsm.translate_pin(under_zpk, PAN, encrypt_only, 0, tpk, 0)
    assert info.value.code == "13" and "mode of use E" in info.value.message


def _tdes_decrypt(key_hex: str, block_hex: str) -> bytes:
    from hsm_sim.crypto.des import tdes_ecb_decrypt

    return tdes_ecb_decrypt(bytes.fromhex(key_hex), bytes.fromhex(block_hex))


async def test_an_edited_key_store_entry_is_refused(tmp_path):
    hsm = Hsm.open(tmp_path / "ks.json")
    cvk = await hsm.generate_key("CVK")
    pvk = await hsm.generate_key("PVK")
    await hsm.close()
    import json

    doc = json.loads((tmp_path / "ks.json").read_text())
    blocks = {item["info"]["kcv"]: item["block"] for item in doc["keys"]}
    for item in doc["keys"]:  # swap the two keys' blocks: each entry now names the other's key
        item["block"] = blocks[pvk.kcv if item["info"]["kcv"] == cvk.kcv else cvk.kcv]
    (tmp_path / "ks.json").write_text(json.dumps(doc))
    hsm = Hsm.open(tmp_path / "ks.json")
    with pytest.raises(HsmError) as info:
        await hsm.generate_cvv(cvk.kcv, PAN, "3012", "000")
    assert info.value.code == "40" and "does not match its LMK block" in info.value.message
    await hsm.close()

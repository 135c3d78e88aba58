"""EMV ICC master key, session keys, ARQC and ARPC against pyemv's published examples and its CVN classes."""

import doctest

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyemv import cvn as pyemv_cvn

from hsm_sim.crypto import emv

pytestmark = pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")

IMK = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")


def test_docstring_examples_run():
    assert doctest.testmod(emv).failed == 0


def test_published_examples():
    assert emv.derive_icc_master_key(IMK, "12345678901234567", "01", option="A").hex().upper() == "73AD54688CEF2934B0979857E3C719F1"
    assert emv.derive_icc_master_key(IMK, "12345678901234567", "01", cvn=18).hex().upper() == "AD406D7F6D7570916D75E5DCAB8CF737"
    assert emv.derive_icc_master_key(IMK, "12345678901234567", "01", cvn=10).hex().upper() == "73AD54688CEF2934B0979857E3C719F1"
    sk = bytes.fromhex("29B33180E567CE38EA4CBC9D753B0E61")
    arqc = emv.generate_arqc(sk, bytes.fromhex("0123456789ABCDEF0123456789ABCDEF"), cvn=18)
    assert arqc.hex().upper() == "FA624250B008B59A"
    assert emv.generate_arpc_method1(sk, arqc, bytes(2)).hex().upper() == "45D4255EEF10C920"
    assert emv.generate_arpc_method2(sk, arqc, bytes(4)).hex().upper() == "CB56FA40"


CLASSES = {
    10: pyemv_cvn.VisaCVN10,
    16: pyemv_cvn.MasterCardCVN16,
    17: pyemv_cvn.MasterCardCVN17,
    18: pyemv_cvn.VisaCVN18,
    20: pyemv_cvn.MasterCardCVN20,
    21: pyemv_cvn.MasterCardCVN21,
    22: pyemv_cvn.VisaCVN22,
}
FIELD_SIZES = (6, 6, 2, 5, 2, 3, 1, 4, 2, 2)  # 9F02 9F03 9F1A 95 5F2A 9A 9C 9F37 82 9F36


@settings(max_examples=30, deadline=None)
@given(
    cvn=st.sampled_from(sorted(CLASSES)),
    imk=st.binary(min_size=16, max_size=16),
    pan=st.text("0123456789", min_size=12, max_size=19),
    psn=st.text("0123456789", min_size=2, max_size=2),
    tags=st.tuples(*(st.binary(min_size=n, max_size=n) for n in FIELD_SIZES)),
    iad=st.binary(min_size=6, max_size=32),
    counters=st.binary(min_size=0, max_size=8),
    arc=st.binary(min_size=2, max_size=2),
    csu=st.binary(min_size=4, max_size=4),
)
def test_matches_pyemv_cvn_classes(cvn, imk, pan, psn, tags, iad, counters, arc, csu):
    card = CLASSES[cvn](imk, imk, imk, pan, psn)
    args = list(tags) + [iad] + ([counters] if cvn in (17, 21) else [])
    expected_arqc = card.generate_ac(*args)
    un, atc = tags[7], tags[9]

    icc_mk = emv.derive_icc_master_key(imk, pan, psn, cvn=cvn)
    assert icc_mk == card.icc_mk_ac
    sk = emv.derive_session_key(icc_mk, atc, cvn=cvn, unpredictable_number=un)
    data = b"".join(args)
    arqc = emv.generate_arqc(sk, data, cvn=cvn)
    assert arqc == expected_arqc

    key = emv.arpc_key(icc_mk, sk, cvn=cvn)
    if cvn in (18, 22):
        assert emv.generate_arpc_method2(key, arqc, csu) == card.generate_arpc(arqc, atc, csu)
    elif cvn in (20, 21):
        assert emv.generate_arpc_method1(key, arqc, arc) == card.generate_arpc(arqc, atc, arc)
    else:
        assert emv.generate_arpc_method1(key, arqc, arc) == card.generate_arpc(arqc, arc)


@settings(max_examples=60, deadline=None)
@given(
    cvn=st.sampled_from(sorted(CLASSES)),
    imk=st.binary(min_size=16, max_size=16),
    pan=st.text("0123456789", min_size=17, max_size=19),
    psn=st.text("0123456789", min_size=2, max_size=2),
)
def test_long_pans_derive_as_each_cryptogram_version_requires(cvn, imk, pan, psn):
    """PANs of 17 to 19 digits: option B for Visa CVN 18 and 22, option A for the others, as pyemv's cards do."""
    reference = CLASSES[cvn](imk, imk, imk, pan, psn)
    option = emv.master_key_option(cvn, pan)
    assert option == ("B" if cvn in (18, 22) else "A")
    assert emv.derive_icc_master_key(imk, pan, psn, cvn=cvn) == reference.icc_mk_ac
    assert emv.derive_icc_master_key(imk, pan, psn, option=option) == reference.icc_mk_ac
    assert emv.derive_icc_master_key(imk, pan, psn, option="A") != emv.derive_icc_master_key(imk, pan, psn, option="B")


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: emv.derive_icc_master_key(IMK[:8], "4123456789012345", "01"), "IMK must be 16 bytes, got 8"),
        (lambda: emv.derive_icc_master_key(IMK, "41234567890", "01"), "PAN must be 12 to 19 decimal digits"),
        (lambda: emv.derive_icc_master_key(IMK, "4123456789012345", "1"), "PAN sequence number must be 2 decimal digits"),
        (lambda: emv.derive_icc_master_key(IMK, "4123456789012345", "01", option="C"), "option must be 'A' or 'B'"),
        (lambda: emv.derive_icc_master_key(IMK, "4123456789012345", "01"), "needs the cryptogram version or the option"),
        (lambda: emv.derive_session_key(IMK, b"\0", cvn=18), "ATC must be 2 bytes, got 1"),
        (lambda: emv.derive_session_key(IMK, b"\0\1", cvn=16), "needs a 4-byte unpredictable number, got none"),
        (lambda: emv.derive_session_key(IMK, b"\0\1", cvn=17, unpredictable_number=b"\1"), "got 1 bytes"),
        (lambda: emv.derive_session_key(IMK, b"\0\1", cvn=99), "cryptogram version 99 is not supported"),
        (lambda: emv.generate_arqc(IMK, b"", cvn=10), "ARQC transaction data is empty"),
        (lambda: emv.generate_arqc(IMK[:8], b"x", cvn=10), "AC session key must be 16 bytes, got 8"),
        (lambda: emv.generate_arpc_method1(IMK, bytes(7), bytes(2)), "ARQC must be 8 bytes, got 7"),
        (lambda: emv.generate_arpc_method1(IMK, bytes(8), bytes(3)), "ARPC response code must be 2 bytes, got 3"),
        (lambda: emv.generate_arpc_method2(IMK, bytes(8), bytes(2)), "CSU must be 4 bytes, got 2"),
        (lambda: emv.generate_arpc_method2(IMK, bytes(8), bytes(4), bytes(9)), "0 to 8 bytes, got 9"),
    ],
)
def test_bad_inputs(call, message):
    with pytest.raises(ValueError, match=message):
        call()

"""X9.24-3 AES DUKPT working keys, key types and KSN stepping against the standard's test vectors.

Vectors: Supplement to ANSI X9.24-3-2017 Test Vectors (x9.org, 2018-01-29), AES-128 BDK
FEDCBA9876543210F1F1F1F1F1F1F1F1 and the AES-256 BDK made of it twice, initial key ID 1234567890123456.
The same numbers are reproduced by moov-io/dukpt's pkg/aes tests and the AesDukpt Java reference tests.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsm_sim.crypto.dukpt_aes import (
    MAX_COUNTER_ONE_BITS,
    KeyType,
    KeyUsage,
    derive_initial_key,
    derive_working_key,
    next_ksn,
    transaction_derivation_key,
)
from hsm_sim.crypto.pinblock import PinBlockError, decipher_pin_block_iso4

BDK128 = bytes.fromhex("FEDCBA9876543210F1F1F1F1F1F1F1F1")
BDK256 = BDK128 * 2
IKID = bytes.fromhex("1234567890123456")
IK128 = bytes.fromhex("1273671EA26AC29AFA4D1084127652A1")
IK256 = bytes.fromhex("CE9CE0C101D1138F97FB6CAD4DF045A7083D4EAE2D35A31789D01CCF0949550F")


def _ksn(counter: int) -> bytes:
    return IKID + counter.to_bytes(4, "big")


# (initial key, counter, usage, working key type) -> published working key.
WORKING_KEYS = [
    (IK128, 1, KeyUsage.PIN_ENCRYPTION, KeyType.AES128, "AF8CB133A78F8DC2D1359F18527593FB"),
    (IK128, 1, KeyUsage.MAC_GENERATION, KeyType.AES128, "A2DC23DE6FDE0824A2BC321E08E4B8B7"),
    (IK128, 1, KeyUsage.MAC_VERIFICATION, KeyType.AES128, "DBB463945B286C07CD3AD82EE96FD9C9"),
    (IK128, 1, KeyUsage.MAC_BOTH_WAYS, KeyType.AES128, "85675439D18D7F1158BD8E3EAA3D502B"),
    (IK128, 1, KeyUsage.DATA_ENCRYPT, KeyType.AES128, "A35C412EFD41FDB98B69797C02DCD08F"),
    (IK128, 1, KeyUsage.DATA_DECRYPT, KeyType.AES128, "16292C6EA8F64C5420A0584BFBC577BE"),
    (IK128, 1, KeyUsage.DATA_BOTH_WAYS, KeyType.AES128, "A308E080DD15A1B741F1721BF67DE11C"),
    (IK128, 1, KeyUsage.KEY_ENCRYPTION_KEY, KeyType.AES128, "36A724B7BEFA5A25F5E7B5782A4554A2"),
    (IK128, 2, KeyUsage.PIN_ENCRYPTION, KeyType.AES128, "D30BDC73EC9714B000BEC66BDB7B6D09"),
    (IK128, 8, KeyUsage.PIN_ENCRYPTION, KeyType.AES128, "4D9DF3FBEE3448FC3E676D04320A90F5"),
    (IK128, 8, KeyUsage.MAC_GENERATION, KeyType.AES128, "6FD572E5D59E618875F193484F9178FB"),
    (IK128, 8, KeyUsage.DATA_ENCRYPT, KeyType.AES128, "650F34204ABD4E57764D61AC3D266FB1"),
    # 2TDEA and 3TDEA working keys from the AES-128 BDK (the supplement's TDEA suites).
    (IK128, 1, KeyUsage.PIN_ENCRYPTION, KeyType.TDES2, "630C706D9546E47D4449313F61C4D4AB"),
    (IK128, 1, KeyUsage.MAC_GENERATION, KeyType.TDES2, "5D8FD787E8A796D07035FFCA9B5800BB"),
    (IK128, 1, KeyUsage.DATA_ENCRYPT, KeyType.TDES2, "BD44121C223F831446A01EE3A4CB58D2"),
    (IK128, 1, KeyUsage.PIN_ENCRYPTION, KeyType.TDES3, "EA8B3F37EB9B15831167EF2977FD8762D9B5913F35766F6A"),
    (IK128, 1, KeyUsage.MAC_GENERATION, KeyType.TDES3, "2A1061A6EAC2C14FAC3758EA07B3648A624B24E942785BF1"),
    (IK128, 1, KeyUsage.DATA_ENCRYPT, KeyType.TDES3, "F716DFBC6B2D2D5825B694EEEE181A013F2F1C09380BBE0C"),
    # AES-256 BDK suite.
    (IK256, 1, KeyUsage.PIN_ENCRYPTION, KeyType.AES256,
     "8C1AB7BEE973829E30242E0BBBDD4946D540C98FC1B5BDCF94790001A23FD502"),
    (IK256, 1, KeyUsage.MAC_GENERATION, KeyType.AES256,
     "61DABDF4B340CF461EE860B1D1AB55357142BD2D6977306859CF49AEFE8F1549"),
    (IK256, 1, KeyUsage.DATA_ENCRYPT, KeyType.AES256,
     "71EB36C9A6B7F801D1D1700C29741FC5A5C4E9B45D742DA7AF6992B8AA29AF58"),
]


@pytest.mark.parametrize("initial_key, counter, usage, key_type, expected", WORKING_KEYS)
def test_published_working_keys(initial_key, counter, usage, key_type, expected):
    assert derive_working_key(initial_key, _ksn(counter), usage, key_type).hex().upper() == expected


def test_published_initial_keys_and_aes256_derivation_keys():
    assert derive_initial_key(BDK128, IKID, KeyType.AES128) == IK128
    assert derive_initial_key(BDK256, IKID, KeyType.AES256) == IK256
    # Supplement, AES-256 BDK: intermediate derivation keys for counters 1, 2, 3.
    expected = {
        1: "54AC2B32B145EA4A554CB8BC44B17467063A799856B1CCC2A138D36E8DBF78B3",
        2: "5DD5A0253842BBBE1D7C0DA27021412C6F1FAB53FB928DEAE56DA06090A9DE97",
        3: "8EEEF7C464AE415BB1D73FAED21993CD669F7999092A579EC6DD3CC680C65171",
    }
    for counter, key in expected.items():
        assert transaction_derivation_key(IK256, _ksn(counter)).hex().upper() == key


@pytest.mark.parametrize(
    "key, block",
    [
        # Format 4 PIN blocks for PIN 1234, PAN 4111111111111111 under the counter 1 and 2 PIN keys.
        ("AF8CB133A78F8DC2D1359F18527593FB", "A912150391AB65A67E52883D81CE2D15"),
        ("D30BDC73EC9714B000BEC66BDB7B6D09", "52A00503BD34BA1383F6A7EE9FE2547F"),
    ],
)
def test_published_format4_pin_blocks_under_dukpt_pin_keys(key, block):
    assert decipher_pin_block_iso4(bytes.fromhex(key), bytes.fromhex(block), "4111111111111111") == "1234"
    with pytest.raises(PinBlockError):
        decipher_pin_block_iso4(bytes.fromhex(key), bytes.fromhex(block), "4111111111111129")


def test_next_ksn_steps_and_skips_counters_with_too_many_one_bits():
    assert next_ksn(_ksn(0)) == _ksn(1)
    assert next_ksn(_ksn(1)) == _ksn(2)
    # 0x0000FFFF has 16 one-bits; 0x0001FFFF would have 17, so the device goes to 0x00020000.
    assert next_ksn(_ksn(0x0001FFFE)) == _ksn(0x00020000)
    assert next_ksn(_ksn(0xFFFE8000)) == _ksn(0xFFFF0000)
    with pytest.raises(ValueError, match="counter is exhausted"):
        next_ksn(_ksn(0xFFFF0000))
    with pytest.raises(ValueError, match="KSN must be 12 bytes, got 10"):
        next_ksn(_ksn(1)[:10])


@settings(max_examples=200, deadline=None)
@given(counter=st.integers(0, 0xFFFEFFFF).filter(lambda c: bin(c).count("1") <= MAX_COUNTER_ONE_BITS))
def test_next_ksn_is_the_smallest_valid_larger_counter(counter):
    following = int.from_bytes(next_ksn(_ksn(counter))[8:], "big")
    assert following > counter
    assert bin(following).count("1") <= MAX_COUNTER_ONE_BITS
    # Nothing valid was skipped: every counter in between has too many one-bits.
    assert all(bin(c).count("1") > MAX_COUNTER_ONE_BITS for c in range(counter + 1, min(following, counter + 5000)))
    assert next_ksn(_ksn(counter))[:8] == IKID


@settings(max_examples=25, deadline=None)
@given(counter=st.integers(1, 0xFFFEFFFF).filter(lambda c: bin(c).count("1") <= MAX_COUNTER_ONE_BITS))
def test_keys_differ_across_counters_and_key_types(counter):
    ksn = _ksn(counter)
    following = next_ksn(ksn)
    assert derive_working_key(IK128, ksn, KeyUsage.PIN_ENCRYPTION) != derive_working_key(
        IK128, following, KeyUsage.PIN_ENCRYPTION
    )
    tdes2 = derive_working_key(IK128, ksn, KeyUsage.PIN_ENCRYPTION, KeyType.TDES2)
    tdes3 = derive_working_key(IK128, ksn, KeyUsage.PIN_ENCRYPTION, KeyType.TDES3)
    assert len(tdes2) == 16 and len(tdes3) == 24 and tdes3[:16] != tdes2


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: derive_working_key(IK128, _ksn(1), KeyUsage.PIN_ENCRYPTION, KeyType.AES192),
         "a AES192 working key cannot be derived from a AES128 key"),
        (lambda: derive_working_key(IK128, _ksn(1), KeyUsage.KEY_DERIVATION_INITIAL_KEY),
         "KEY_DERIVATION_INITIAL_KEY is not a working key usage"),
        (lambda: derive_working_key(IK128, _ksn(0xFFFFFFFF), KeyUsage.PIN_ENCRYPTION), "more than 16 one-bits"),
    ],
)
def test_bad_inputs_name_the_input_and_never_the_key(call, message):
    with pytest.raises(ValueError, match=message) as info:
        call()
    assert IK128.hex() not in str(info.value).lower()


def test_aes192_and_weaker_working_keys_from_stronger_initial_keys():
    bdk192 = BDK128 + BDK128[:8]
    ik192 = derive_initial_key(bdk192, IKID, KeyType.AES192)
    assert len(ik192) == 24 and ik192 not in (IK128, IK256[:24])
    assert len(derive_working_key(ik192, _ksn(1), KeyUsage.PIN_ENCRYPTION, KeyType.AES192)) == 24
    # A weaker key comes from a stronger one, and its derivation data differs from the full-size key's.
    aes128_from_256 = derive_working_key(IK256, _ksn(1), KeyUsage.PIN_ENCRYPTION, KeyType.AES128)
    assert len(aes128_from_256) == 16
    assert aes128_from_256 != derive_working_key(IK256, _ksn(1), KeyUsage.PIN_ENCRYPTION, KeyType.AES256)[:16]
    with pytest.raises(ValueError, match="a AES256 working key cannot be derived from a AES192 key"):
        derive_working_key(ik192, _ksn(1), KeyUsage.PIN_ENCRYPTION, KeyType.AES256)

"""The load generator's DES through libcrypto gives what the independent references give: pydukpt's DUKPT
keys and psec's retail MAC, and hsm_sim's where libcrypto has no DES (the fallback)."""

from __future__ import annotations

import pydukpt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psec.mac import generate_retail_mac

from terminal_sim.fastmac import DesBlocks, DukptPath
from terminal_sim.pos import next_dukpt_counter

IPEK = bytes.fromhex("6AC292FAA1315B4D858AB3A3D7D5933A")
INITIAL_KSN = bytes.fromhex("FFFF9876543210E00000")
BOTH = [DesBlocks(), DesBlocks(native=False)]


def test_libcrypto_has_the_des_api_on_this_machine():
    # The fast path is what load runs measure here: its silent absence would make them slow, not wrong.
    assert BOTH[0].native and not BOTH[1].native


@pytest.mark.parametrize("des", BOTH, ids=["libcrypto", "hsm_sim"])
@settings(max_examples=150, deadline=None)
@given(key=st.binary(min_size=16, max_size=16), data=st.binary(min_size=1, max_size=300))
def test_the_retail_mac_is_psecs(des, key, data):
    assert des.retail_mac(key, data) == generate_retail_mac(key[:8], key[8:], data, padding=1)


@pytest.mark.parametrize("des", BOTH, ids=["libcrypto", "hsm_sim"])
@settings(max_examples=60, deadline=None)
@given(start=st.integers(0, 2**20), jumps=st.lists(st.integers(1, 3000), min_size=1, max_size=6))
def test_transaction_and_mac_keys_are_pydukpts(des, start, jumps):
    path = DukptPath(IPEK, INITIAL_KSN, des)
    counter = start
    for jump in jumps:
        # A terminal moves one usable counter at a time; a restored state file may jump ahead.
        counter = next_dukpt_counter(counter if jump > 2 else counter + jump - 1)
        if counter >= 2**21:
            return
        key = pydukpt.derive_key(IPEK, pydukpt.ksn_with_counter(INITIAL_KSN, counter))
        assert path.transaction_key(counter).to_bytes(16, "big") == key
        assert path.mac_keys(counter) == (pydukpt.mac_request_key(key), pydukpt.mac_response_key(key))


def test_a_long_sequence_then_an_old_counter():
    path = DukptPath(IPEK, INITIAL_KSN, BOTH[0])
    counter = 0
    for _ in range(500):
        counter = next_dukpt_counter(counter)
        path.transaction_key(counter)
    key = pydukpt.derive_key(IPEK, pydukpt.ksn_with_counter(INITIAL_KSN, counter))
    assert path.transaction_key(counter).to_bytes(16, "big") == key
    assert path.transaction_key(3).to_bytes(16, "big") == pydukpt.derive_key(IPEK, pydukpt.ksn_with_counter(INITIAL_KSN, 3))

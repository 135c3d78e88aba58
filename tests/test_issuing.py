"""PAN generation, surrogates and masking."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from processor.issuing import generate_pan, luhn_check_digit, luhn_valid, mask_pan, surrogate_for
from processor.issuing.pan import SURROGATE_PREFIX

bins = st.text("0123456789", min_size=6, max_size=8).filter(lambda b: b[0] != "0")


def test_luhn_known_numbers():
    assert luhn_valid("4111111111111111")
    assert luhn_valid("79927398713")
    assert not luhn_valid("4111111111111112")
    assert luhn_check_digit("7992739871") == "3"


@given(bins, st.integers(min_value=13, max_value=19))
def test_generated_pans_are_luhn_valid_and_in_the_bin(bin_prefix, length):
    pan = generate_pan(bin_prefix, length)
    assert len(pan) == length and pan.startswith(bin_prefix) and luhn_valid(pan)


@given(bins)
def test_surrogate_keeps_length_and_last_four_and_never_looks_like_a_scheme_card(bin_prefix):
    pan = generate_pan(bin_prefix)
    surrogate = surrogate_for(pan)
    assert len(surrogate) == len(pan)
    assert surrogate[-4:] == pan[-4:]
    assert surrogate.startswith(SURROGATE_PREFIX)
    assert luhn_valid(surrogate)
    assert surrogate != pan


def test_bad_bins_and_pans_are_refused():
    with pytest.raises(ValueError, match="BIN"):
        generate_pan("12ab56")
    with pytest.raises(ValueError, match="13 to 19"):
        surrogate_for("1234")


def test_mask_pan():
    assert mask_pan("4761739001010010") == "476173******0010"
    assert mask_pan("123") == "***"
    assert mask_pan(None) == "-"

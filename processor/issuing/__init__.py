"""BIN ranges, PAN generation, card issuance and lifecycle, PIN set."""

from processor.issuing.cards import IssuedCard, issue_card, pin_verification_for, pin_validation_data
from processor.issuing.keys import IssuerKeys, ensure_issuer_keys, load_issuer_keys
from processor.issuing.pan import generate_pan, luhn_check_digit, luhn_valid, mask_pan, surrogate_for

__all__ = [
    "IssuedCard",
    "IssuerKeys",
    "ensure_issuer_keys",
    "generate_pan",
    "issue_card",
    "load_issuer_keys",
    "luhn_check_digit",
    "luhn_valid",
    "mask_pan",
    "pin_validation_data",
    "pin_verification_for",
    "surrogate_for",
]

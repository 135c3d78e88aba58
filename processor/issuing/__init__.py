"""Issuing: cardholders, cards and their lifecycle, merchants and terminals, the issuer's keys and settings.

Each module owns its tables and queries and runs them through a `processor.ledger.StoreInterface`:

    cardholder_id = await issuing.cardholders.create(store, "Ada Lovelace", "ada")
    card = await issuing.cards.issue_card(store, hsm, keys, account_id=account_id, pin="1234")
    terminal = await issuing.terminals.add_terminal(store, hsm, keys, terminal_id="T1", merchant_id="M1", mcc="5411")

Accounts and money are the ledger's (`processor.ledger.accounts`); issuing depends on the ledger, never the
other way round.
"""

from processor.issuing import (
    cardholders,
    cards,
    config,
    keys,
    merchants,
    pan,
    personalization,
    provisioning,
    terminals,
)
from processor.issuing.cards import IssuedCard, issue_card, pin_validation_data, pin_verification_for
from processor.issuing.keys import IssuerKeys, ensure_issuer_keys, load_issuer_keys
from processor.issuing.pan import generate_pan, luhn_check_digit, luhn_valid, mask_pan, surrogate_for

__all__ = [
    "IssuedCard",
    "IssuerKeys",
    "cardholders",
    "cards",
    "config",
    "ensure_issuer_keys",
    "generate_pan",
    "issue_card",
    "keys",
    "load_issuer_keys",
    "luhn_check_digit",
    "luhn_valid",
    "mask_pan",
    "merchants",
    "pan",
    "personalization",
    "provisioning",
    "pin_validation_data",
    "pin_verification_for",
    "surrogate_for",
    "terminals",
]

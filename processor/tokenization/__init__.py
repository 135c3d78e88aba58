"""Tokenization: payment tokens for wallets (their table, lifecycle and look-up), wallet provisioning and card
replacement, and the PAN vault's key rotation (re-sealing every card and token under new key versions).

    token = await tokenization.wallet.provision_token(store, hsm, keys, card_id=1, wallet="phone", device_id="P1")
    await tokenization.tokens.set_status(store, token["id"], "suspended", "phone lost")
"""

from processor.tokenization import tokens, vault, wallet
from processor.tokenization.vault import current_versions, rotate_keys, rotate_vault
from processor.tokenization.wallet import (
    delete_token,
    provision_token,
    replace_card,
    resume_token,
    suspend_token,
    token_details,
)

__all__ = [
    "current_versions",
    "delete_token",
    "provision_token",
    "replace_card",
    "resume_token",
    "rotate_keys",
    "rotate_vault",
    "suspend_token",
    "token_details",
    "tokens",
    "vault",
    "wallet",
]

"""Tokenization: PAN vault key rotation and wallet payment tokens (provisioning, lifecycle, card replacement)."""

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
]

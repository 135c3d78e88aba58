"""The authorization engine: decode, validate, card and security checks, funds, answer."""

from processor.auth.engine import CARD_CHECKS, Declined, Engine
from processor.auth.policy import Policy

__all__ = ["CARD_CHECKS", "Declined", "Engine", "Policy"]

"""An issuer with cards and terminals, and an engine listening on a free loopback port."""

from engine_helpers import issuer, issuer_copies

__all__ = ["issuer", "issuer_copies"]

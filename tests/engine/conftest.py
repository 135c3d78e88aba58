"""An issuer with cards and terminals, and an engine listening on a free loopback port."""

from engine_helpers import issuer

__all__ = ["issuer"]

"""EMV chip: a virtual card with its own cryptogram code, and the terminal kernel that reads it."""

from terminal_sim.emv.card import CardProfile, GarbageCard, GarbageMode, SealError, VirtualCard, make_track2
from terminal_sim.emv.kernel import CardError, CardReadResult, complete, read_card

__all__ = [
    "CardProfile",
    "VirtualCard",
    "GarbageCard",
    "GarbageMode",
    "SealError",
    "make_track2",
    "CardError",
    "CardReadResult",
    "read_card",
    "complete",
]

"""EMV chip: a virtual card, the terminal kernel that reads it, and the shared cryptogram input."""

from terminal_sim.emv.card import CardProfile, GarbageCard, GarbageMode, SealError, VirtualCard, make_track2
from processor.auth.cryptogram import arqc_transaction_data
from terminal_sim.emv.kernel import CardError, CardReadResult, complete, read_card

__all__ = [
    "CardProfile",
    "VirtualCard",
    "GarbageCard",
    "GarbageMode",
    "SealError",
    "make_track2",
    "arqc_transaction_data",
    "CardError",
    "CardReadResult",
    "read_card",
    "complete",
]

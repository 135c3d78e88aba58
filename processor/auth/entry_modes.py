"""What each POS entry mode (DE 22 positions 1-2) must carry and prove before a card request can approve.

This is the engine's deny-by-default table: a mode that is not listed in `ENTRY_MODES` is refused, and so
is a listed mode whose request lacks the data its proof needs. A card number alone proves nothing. The
README's "POS entry modes" table is `markdown_table()` of this one (a test checks that they agree).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Mapping


class Proof(StrEnum):
    """The card verification a request must carry, and that must verify."""

    STRIPE_CVV = "CVV1 on track 2 (DE 35), with the card's service code"
    ARQC = "ARQC in DE 55 that verifies, with an ATC above the last one (a wallet token: its token cryptogram)"
    CVV2 = "CVV2 (DE 48 `C2`)"


@dataclass(frozen=True, slots=True)
class EntryMode:
    """One accepted POS entry mode: the fields it must carry (`requires`) and the proof they hold."""

    code: str
    name: str
    proof: Proof
    requires: tuple[str, ...]
    expiry_from: str  # the data element whose expiry date must be present and match the card's


ENTRY_MODES: Mapping[str, EntryMode] = MappingProxyType(
    {
        mode.code: mode
        for mode in (
            EntryMode("01", "keyed (manual entry)", Proof.CVV2, ("2", "14", "48 C2"), "14"),
            EntryMode("02", "magnetic stripe", Proof.STRIPE_CVV, ("35",), "35"),
            EntryMode("90", "magnetic stripe, full track read", Proof.STRIPE_CVV, ("35",), "35"),
            EntryMode("80", "magnetic stripe after a chip failure (fallback)", Proof.STRIPE_CVV, ("35",), "35"),
            EntryMode("05", "chip (contact)", Proof.ARQC, ("35", "55"), "35"),
            EntryMode("07", "chip (contactless)", Proof.ARQC, ("35", "55"), "35"),
        )
    }
)

# Modes a terminal may send that this issuer refuses on purpose, with the reason the log gives. Every
# other value is refused as unknown.
REFUSED_MODES: Mapping[str, str] = MappingProxyType(
    {
        "00": "entry mode unknown to the terminal",
        "91": "contactless magnetic stripe: no per-tap dynamic CVV is verified here",
        "81": "e-commerce: not accepted on the card-present host interface",
        "10": "credential on file: not accepted on the card-present host interface",
    }
)


def lookup(code: str | None) -> EntryMode | None:
    """The accepted mode for DE 22 positions 1-2, or None when the mode is missing, refused or unknown."""
    return ENTRY_MODES.get(code) if code else None


def markdown_table() -> str:
    """The table as the README shows it."""
    lines = ["| DE 22 (1-2) | entry mode | must carry | proof that must verify | expiry from |", "|---|---|---|---|---|"]
    for mode in ENTRY_MODES.values():
        carried = ", ".join(f"DE {de}" for de in mode.requires)
        lines.append(f"| `{mode.code}` | {mode.name} | {carried} | {mode.proof.value} | DE {mode.expiry_from} |")
    for code, reason in REFUSED_MODES.items():
        lines.append(f"| `{code}` | refused: {reason} | | | |")
    lines.append("| anything else, or no DE 22 | refused | | | |")
    return "\n".join(lines)

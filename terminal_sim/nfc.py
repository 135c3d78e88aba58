"""A contactless (NFC) terminal: qVSDC taps with a contactless limit above which online PIN is asked.

A tap runs the PPSE path of the kernel: the card answers GET PROCESSING OPTIONS with its ARQC and
leaves the field, so the issuer's answer decides (there is no second GENERATE AC). Above the
contactless CVM limit the terminal asks for the cardholder's PIN and sends it online (DUKPT).

Credentials are pluggable: a physical card is read as a card (:meth:`ContactlessTerminal.tap`). A wallet
taps with a device token instead: its virtual card presents the token PAN and the token cryptogram, and
the request carries the token in DE 2; that flow goes through :meth:`ContactlessTerminal.tap_wallet`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from terminal_sim.chip_pos import ChipResult, Reconnect, chip_transaction
from terminal_sim.emv.kernel import Transmit
from terminal_sim.iso_client import TerminalConnection
from terminal_sim.pos import PosTerminal

__all__ = ["DEFAULT_CONTACTLESS_LIMIT_MINOR", "PinRequired", "ContactlessTerminal"]

DEFAULT_CONTACTLESS_LIMIT_MINOR = 50_00


class PinRequired(Exception):
    """The amount is above the contactless limit: the cardholder must enter a PIN (nothing was sent)."""


@dataclass
class ContactlessTerminal:
    """A POS terminal's contactless reader and its CVM limit (minor units, inclusive)."""

    pos: PosTerminal
    limit_minor: int = DEFAULT_CONTACTLESS_LIMIT_MINOR

    def __post_init__(self) -> None:
        if self.limit_minor < 0:
            raise ValueError("the contactless limit cannot be negative")

    def pin_required(self, amount_minor: int) -> bool:
        """True above the contactless limit."""
        return amount_minor > self.limit_minor

    async def tap(
        self,
        conn: TerminalConnection | None,
        transmit: Transmit,
        amount_minor: int,
        *,
        pin: str | None = None,
        reconnect: Reconnect | None = None,
        timeout_s: float | None = None,
        **options: Any,
    ) -> ChipResult:
        """One contactless card tap; PinRequired above the limit when no PIN is given.

        Below the limit a PIN is not sent even when given (no CVM); options go to chip_transaction.
        """
        needs_pin = self.pin_required(amount_minor)
        if needs_pin and pin is None:
            raise PinRequired(
                f"amount {amount_minor} is above the contactless limit {self.limit_minor}: online PIN required"
            )
        return await chip_transaction(
            conn,
            self.pos,
            transmit,
            amount_minor,
            contactless=True,
            pin=pin if needs_pin else None,
            reconnect=reconnect,
            timeout_s=timeout_s,
            **options,
        )

    async def tap_wallet(
        self,
        conn: TerminalConnection | None,
        transmit: Transmit,
        amount_minor: int,
        *,
        reconnect: Reconnect | None = None,
        timeout_s: float | None = None,
        **options: Any,
    ) -> ChipResult:
        """A phone's tap: its wallet presents the device token and the token cryptogram (DE 2, DE 55).

        The phone verifies its holder itself (consumer-device CVM), so the contactless limit asks for
        no PIN: the issuer relies on the token's domain restrictions and cryptogram instead.
        """
        return await chip_transaction(
            conn, self.pos, transmit, amount_minor, contactless=True, pin=None, reconnect=reconnect, timeout_s=timeout_s, **options
        )

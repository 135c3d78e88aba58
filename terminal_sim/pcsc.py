"""A PC/SC card reader on pyscard (pcscd), with GET RESPONSE and 6Cxx handling.

``PcscReader.transmit`` has the kernel's ``transmit(bytes) -> bytes`` shape, so
``read_card(reader.transmit, ...)`` runs a transaction through pcscd.
"""

from __future__ import annotations

import time

__all__ = ["PcscError", "PcscReader", "list_readers"]

_MAX_CHAINED = 16
_POLL_S = 0.1


class PcscError(RuntimeError):
    """pcscd, the reader or the card is not available or a transmit failed."""


def list_readers() -> list[str]:
    """Names of the readers pcscd knows; empty when pcscd has none or is not running."""
    try:
        from smartcard.System import readers
        from smartcard.Exceptions import ListReadersException
    except ImportError as e:  # pragma: no cover - pyscard is a pinned dependency
        raise PcscError(f"pyscard is not installed: {e}") from None
    try:
        return [str(r) for r in readers()]
    except ListReadersException:
        return []
    except Exception as e:  # pcscd not running surfaces as EstablishContextException
        if type(e).__name__ in ("EstablishContextException", "CardServiceException"):
            return []
        raise


class PcscReader:
    """One named PC/SC reader slot; connect, transmit APDUs, disconnect."""

    def __init__(self, name: str = "Virtual PCD 00 00", protocol: str | None = None) -> None:
        """`protocol` "T=0" or "T=1" asks pcscd for that protocol; by default it takes the card's first offer."""
        if protocol not in (None, "T=0", "T=1"):
            raise ValueError(f"protocol must be T=0 or T=1, not {protocol!r}")
        self.name = name
        self.requested_protocol = protocol
        self._connection = None
        self.atr: bytes | None = None
        self.protocol: str | None = None

    @staticmethod
    def list_readers() -> list[str]:
        """Names of the readers pcscd knows."""
        return list_readers()

    def connect(self, timeout_s: float = 5.0) -> bytes:
        """Wait up to timeout_s for the reader and a card in it; return the ATR."""
        from smartcard.System import readers

        deadline = time.monotonic() + timeout_s
        last_error = "reader not listed"
        while True:
            try:
                reader = next((r for r in readers() if str(r) == self.name), None)
            except Exception as e:  # pcscd not (yet) running
                reader, last_error = None, f"{type(e).__name__}: {e}"
            if reader is not None:
                from smartcard.CardConnection import CardConnection

                wanted = {"T=0": CardConnection.T0_protocol, "T=1": CardConnection.T1_protocol}.get(self.requested_protocol or "")
                conn = reader.createConnection()
                try:
                    conn.connect(protocol=wanted)
                except Exception as e:  # NoCardException, CardConnectionException (also: protocol not offered)
                    last_error = f"{type(e).__name__}: {e}"
                    try:
                        conn.release()
                    except Exception:
                        pass
                else:
                    self._connection = conn
                    self.atr = bytes(conn.getATR())
                    self.protocol = {CardConnection.T0_protocol: "T=0", CardConnection.T1_protocol: "T=1"}.get(conn.getProtocol())
                    return self.atr
            if time.monotonic() >= deadline:
                raise PcscError(f"reader {self.name!r}: no card within {timeout_s} s ({last_error})")
            time.sleep(_POLL_S)

    def disconnect(self) -> None:
        """Release the card (pyscard disconnects and frees the context)."""
        conn, self._connection = self._connection, None
        if conn is not None:
            try:
                conn.disconnect()
            finally:
                try:
                    conn.release()
                except Exception:
                    pass

    def __enter__(self) -> "PcscReader":
        if self._connection is None:
            self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()

    def _raw(self, apdu: bytes) -> tuple[bytes, int, int]:
        if self._connection is None:
            raise PcscError(f"reader {self.name!r}: not connected")
        try:
            data, sw1, sw2 = self._connection.transmit(list(apdu))
        except Exception as e:
            ins = f"{apdu[1]:02X}" if len(apdu) > 1 else "??"
            raise PcscError(f"reader {self.name!r}: transmit of INS {ins} failed: {e}") from None
        return bytes(data), sw1, sw2

    def transmit(self, apdu: bytes) -> bytes:
        """Send a command APDU; return the response data followed by SW1 SW2.

        61xx is followed by GET RESPONSE (the data parts are joined), 6Cxx by the same
        command with Le = xx, each at most 16 times.
        """
        data, sw1, sw2 = self._raw(bytes(apdu))
        out = b""
        for _ in range(_MAX_CHAINED):
            if sw1 == 0x6C and len(apdu) >= 5:
                data, sw1, sw2 = self._raw(bytes(apdu[:-1]) + bytes([sw2]))
                continue
            out += data
            if sw1 == 0x61:
                data, sw1, sw2 = self._raw(bytes([0x00, 0xC0, 0x00, 0x00, sw2]))
                continue
            return out + bytes([sw1, sw2])
        raise PcscError(f"reader {self.name!r}: more than {_MAX_CHAINED} GET RESPONSE/6Cxx rounds")

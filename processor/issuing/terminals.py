"""Terminal registration and DUKPT key injection for the terminals that send us PIN blocks."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from processor.errors import InvalidRequest
from processor.issuing.keys import IssuerKeys

# The key set identifier of our TDES BDK in every KSN (the first 40 bits); each terminal then gets a
# 19-bit device number and a 21-bit transaction counter that starts at zero.
KEY_SET_ID_CONFIG = "dukpt.key_set_id"
DEVICE_COUNTER_CONFIG = "dukpt.next_device"


@dataclass(frozen=True, slots=True)
class RegisteredTerminal:
    """The terminal as registered, with the key material a key-loading device writes into it once."""

    id: int
    terminal_id: str
    merchant_id: str
    mcc: str
    key_scheme: str
    bdk_kcv: str
    initial_ksn: str
    ipek: str
    chip_capable: bool = True

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def initial_ksn(key_set_id: str, device_number: int) -> str:
    """20 hex digits: key set id (10), device number (19 bits), counter (21 bits) at zero."""
    if not 0 <= device_number < 2**19:
        raise InvalidRequest("no DUKPT device numbers left under this key set")
    value = (int(key_set_id, 16) << 40) | (device_number << 21)
    return f"{value:020X}"


async def add_terminal(
    store: Any,
    hsm: Any,
    keys: IssuerKeys,
    *,
    terminal_id: str,
    merchant_id: str,
    mcc: str,
    name: str = "Merchant",
    location: str = "",
    chip_capable: bool = True,
) -> RegisteredTerminal:
    """Register a terminal (and its merchant when new), and derive its IPEK for injection."""
    if not 1 <= len(terminal_id) <= 8:
        raise InvalidRequest("terminal id (DE 41) must be 1 to 8 characters")
    if not 1 <= len(merchant_id) <= 15:
        raise InvalidRequest("merchant id (DE 42) must be 1 to 15 characters")
    if not (len(mcc) == 4 and mcc.isdigit()):
        raise InvalidRequest("MCC must be 4 digits")
    key_set_id = await store.get_config(KEY_SET_ID_CONFIG)
    if key_set_id is None:
        key_set_id = f"FF{keys.bdk[:6]}00"
        await store.set_config(KEY_SET_ID_CONFIG, key_set_id)
    device_number = int(await store.get_config(DEVICE_COUNTER_CONFIG) or "1")
    await store.set_config(DEVICE_COUNTER_CONFIG, str(device_number + 1))
    ksn = initial_ksn(key_set_id, device_number)
    if await store.get_merchant(merchant_id) is None:
        await store.add_merchant(merchant_id=merchant_id, name=name, location=location, mcc=mcc)
    row_id = await store.add_terminal(
        terminal_id=terminal_id,
        merchant_id=merchant_id,
        key_scheme="dukpt-tdes",
        bdk_kcv=keys.bdk,
        initial_ksn=ksn,
        chip_capable=chip_capable,
    )
    ipek = await hsm.inject_ipek(keys.bdk, ksn)
    return RegisteredTerminal(
        id=row_id,
        terminal_id=terminal_id,
        merchant_id=merchant_id,
        mcc=mcc,
        key_scheme="dukpt-tdes",
        bdk_kcv=keys.bdk,
        initial_ksn=ksn,
        ipek=ipek,
        chip_capable=chip_capable,
    )

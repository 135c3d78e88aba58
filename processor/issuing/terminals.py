"""Terminals: registration with their DUKPT key injection, status, and the engine's look-up by DE 41.

A terminal belongs to a merchant (DE 42, added with its first terminal) and sends PIN blocks under its own
DUKPT key, derived from the issuer's BDK and the terminal's initial KSN.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Connection, insert, select, update

from hsm_sim import HsmApi
from processor.errors import InvalidRequest
from processor.issuing import config, merchants
from processor.issuing.keys import IssuerKeys
from processor.ledger import StoreError, StoreInterface, StoreNotFound, apply
from processor.ledger.models import merchants as merchants_table
from processor.ledger.models import terminals, utcnow

# The key set identifier of our TDES BDK in every KSN (the first 40 bits); each terminal then gets a
# 19-bit device number and a 21-bit transaction counter that starts at zero.
KEY_SET_ID_CONFIG = "dukpt.key_set_id"
DEVICE_COUNTER_CONFIG = "dukpt.next_device"


TERMINAL_STATUSES = ("active", "inactive", "blocked")
# key_scheme of an acquiring network's merchant terminal: "network:<acquirer id>". Its messages come over the
# network's connection, MACed under the network's DUKPT key (bdk_kcv and initial_ksn are the network's).
NETWORK_SCHEME = "network:"


@dataclass(frozen=True, slots=True)
class TerminalRecord:
    """A terminal with its merchant's DE 42 id and MCC."""

    id: int
    terminal_id: str
    merchant_id: str
    merchant_name: str
    mcc: str
    status: str
    key_scheme: str | None
    bdk_kcv: str | None
    initial_ksn: str | None
    chip_capable: bool = True


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


async def allocate_initial_ksn(store: StoreInterface, keys: IssuerKeys) -> str:
    """The next device's initial KSN under the issuer's BDK: each terminal (or network connection) has its own."""
    key_set_id = await config.get(store, KEY_SET_ID_CONFIG)
    if key_set_id is None:
        key_set_id = f"FF{keys.bdk[:6]}00"
        await config.put(store, KEY_SET_ID_CONFIG, key_set_id)
    device_number = int(await config.get(store, DEVICE_COUNTER_CONFIG) or "1")
    await config.put(store, DEVICE_COUNTER_CONFIG, str(device_number + 1))
    return initial_ksn(key_set_id, device_number)


async def add_terminal(
    store: StoreInterface,
    hsm: HsmApi,
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
    check_terminal_fields(terminal_id, merchant_id, mcc)
    ksn = await allocate_initial_ksn(store, keys)
    if await merchants.get(store, merchant_id) is None:
        await merchants.add(store, merchant_id=merchant_id, name=name, location=location, mcc=mcc)
    row_id = await create(
        store,
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


def check_terminal_fields(terminal_id: str, merchant_id: str, mcc: str) -> None:
    """Refuse a DE 41, DE 42 or MCC that cannot go on the wire, before anything is written."""
    if not 1 <= len(terminal_id) <= 8:
        raise InvalidRequest("terminal id (DE 41) must be 1 to 8 characters")
    if not 1 <= len(merchant_id) <= 15:
        raise InvalidRequest("merchant id (DE 42) must be 1 to 15 characters")
    if not (len(mcc) == 4 and mcc.isdigit()):
        raise InvalidRequest("MCC must be 4 digits")


async def create(
    store: StoreInterface,
    *,
    terminal_id: str,
    merchant_id: str,
    key_scheme: str | None = None,
    bdk_kcv: str | None = None,
    initial_ksn: str | None = None,
    status: str = "active",
    chip_capable: bool = True,
) -> int:
    """The terminal's row (DE 41) under an existing merchant (DE 42); `add_terminal` registers one with its keys."""
    return await store.run_write(
        _create, terminal_id, merchant_id, key_scheme, bdk_kcv, initial_ksn, status, chip_capable
    )


async def set_status(store: StoreInterface, terminal_id: str, status: str) -> None:
    """active, inactive or blocked; only an active terminal is served."""
    await store.run_write(_set_status, terminal_id, status)


async def claim_ksn_counter(store: StoreInterface, terminal_id: str, counter: int) -> bool:
    """Record `counter` as the terminal's highest DUKPT counter; False when it is not above the last one.

    For messages that record nothing else (0800); card requests claim theirs with their answer.
    """
    return await store.run_write(apply.claim_ksn_counter, terminal_id, counter)


async def get(store: StoreInterface, terminal_id: str) -> TerminalRecord | None:
    """The terminal by DE 41 with its merchant, or None."""
    return await store.run_query(_get, terminal_id)


async def list_all(store: StoreInterface, limit: int = 10_000, merchant_id: str | None = None) -> list[TerminalRecord]:
    """Registered terminals (of one merchant) by terminal id, at most `limit`."""
    return await store.run_query(_list_all, limit, merchant_id)


def _create(
    conn: Connection,
    terminal_id: str,
    merchant_id: str,
    key_scheme: str | None,
    bdk_kcv: str | None,
    initial_ksn: str | None,
    status: str,
    chip_capable: bool,
) -> int:
    merchant_row = conn.execute(
        select(merchants_table.c.id).where(merchants_table.c.merchant_id == merchant_id)
    ).scalar()
    if merchant_row is None:
        raise StoreNotFound(f"merchant {merchant_id!r} does not exist; add it first")
    if conn.execute(select(terminals.c.id).where(terminals.c.terminal_id == terminal_id)).first() is not None:
        raise StoreError(f"terminal {terminal_id!r} already exists")
    return conn.execute(
        insert(terminals).returning(terminals.c.id),
        {
            "terminal_id": terminal_id,
            "merchant_id": merchant_row,
            "status": status,
            "key_scheme": key_scheme,
            "bdk_kcv": bdk_kcv,
            "initial_ksn": initial_ksn,
            "chip_capable": chip_capable,
            "created_at": utcnow(),
        },
    ).scalar_one()


def _set_status(conn: Connection, terminal_id: str, status: str) -> None:
    if status not in TERMINAL_STATUSES:
        raise StoreError(f"terminal status must be active, inactive or blocked, got {status!r}")
    moved = conn.execute(update(terminals).where(terminals.c.terminal_id == terminal_id).values(status=status))
    if moved.rowcount != 1:
        raise StoreNotFound(f"terminal {terminal_id!r} does not exist")


_TERMINAL_SELECT = select(
    terminals.c.id,
    terminals.c.terminal_id,
    merchants_table.c.merchant_id,
    merchants_table.c.name.label("merchant_name"),
    merchants_table.c.mcc,
    terminals.c.status,
    terminals.c.key_scheme,
    terminals.c.bdk_kcv,
    terminals.c.initial_ksn,
    terminals.c.chip_capable,
).join(merchants_table, merchants_table.c.id == terminals.c.merchant_id)


def _get(conn: Connection, terminal_id: str) -> TerminalRecord | None:
    row = conn.execute(_TERMINAL_SELECT.where(terminals.c.terminal_id == terminal_id)).first()
    return TerminalRecord(**row._asdict()) if row is not None else None


def _list_all(conn: Connection, limit: int, merchant_id: str | None = None) -> list[TerminalRecord]:
    query = _TERMINAL_SELECT.order_by(terminals.c.terminal_id).limit(limit)
    if merchant_id is not None:
        query = query.where(merchants_table.c.merchant_id == merchant_id)
    rows = conn.execute(query)
    return [TerminalRecord(**row._asdict()) for row in rows]

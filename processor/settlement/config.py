"""Settlement settings, kept in the store's config table so every process reads the same ones.

    settlement.cutoff         HH:MM[:SS] local time that ends a business day (default 22:00)
    settlement.timezone       IANA zone of the cutoff (default Europe/Paris)
    settlement.fees           the fee table as JSON (default: fees.DEFAULT_RULES)
    settlement.tolerance_bps  how far a presentment may exceed its authorization, in basis points (default 1500)
    network.<acquirer id>     a registered acquiring network: JSON {"name", "bdk_kcv", "initial_ksn"} (its DUKPT key)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from hsm_sim import HsmApi
from processor import issuing
from processor.errors import InvalidRequest
from processor.issuing import IssuerKeys
from processor.issuing.terminals import NETWORK_SCHEME
from processor.ledger import StoreInterface
from processor.settlement.calendar import DEFAULT_CUTOFF, DEFAULT_TIMEZONE, BusinessCalendar
from processor.settlement.fees import FeeTable

DEFAULT_TOLERANCE_BPS = 1500
OWN_ACQUIRER = "1"  # DE 32 of our own terminals (000001)


@dataclass(frozen=True, slots=True)
class SettlementConfig:
    calendar: BusinessCalendar = field(default_factory=BusinessCalendar)
    fees: FeeTable = field(default_factory=FeeTable)
    tolerance_bps: int = DEFAULT_TOLERANCE_BPS

    def as_json(self) -> dict[str, Any]:
        return {
            "cutoff": self.calendar.cutoff,
            "timezone": self.calendar.timezone,
            "tolerance_bps": self.tolerance_bps,
            "fees": self.fees.as_json(),
        }


async def load_config(store: StoreInterface) -> SettlementConfig:
    """The settings in force (defaults where nothing was set)."""
    cutoff = await issuing.config.get(store, "settlement.cutoff") or DEFAULT_CUTOFF
    zone = await issuing.config.get(store, "settlement.timezone") or DEFAULT_TIMEZONE
    fees_text = await issuing.config.get(store, "settlement.fees")
    tolerance = await issuing.config.get(store, "settlement.tolerance_bps")
    return SettlementConfig(
        BusinessCalendar(cutoff, zone),
        FeeTable.from_json(fees_text) if fees_text else FeeTable(),
        int(tolerance) if tolerance else DEFAULT_TOLERANCE_BPS,
    )


async def save_config(
    store: StoreInterface,
    *,
    cutoff: str | None = None,
    timezone: str | None = None,
    fees_json: str | None = None,
    tolerance_bps: int | None = None,
) -> SettlementConfig:
    """Validate and store the given settings; the others stay as they were."""
    current = await load_config(store)
    calendar = BusinessCalendar(cutoff or current.calendar.cutoff, timezone or current.calendar.timezone)
    fees = FeeTable.from_json(fees_json) if fees_json is not None else current.fees
    if tolerance_bps is not None and not 0 <= tolerance_bps <= 100_000:
        raise InvalidRequest(f"tolerance {tolerance_bps} bp must be between 0 and 100000")
    if cutoff:
        await issuing.config.put(store, "settlement.cutoff", calendar.cutoff)
    if timezone:
        await issuing.config.put(store, "settlement.timezone", calendar.timezone)
    if fees_json is not None:
        await issuing.config.put(store, "settlement.fees", fees.to_json())
    if tolerance_bps is not None:
        await issuing.config.put(store, "settlement.tolerance_bps", str(tolerance_bps))
    return await load_config(store)


def _acquirer(acquirer_id: str) -> str:
    if not acquirer_id.isdigit() or len(acquirer_id) > 11:
        raise InvalidRequest(f"acquirer id {acquirer_id!r} must be up to 11 digits (DE 32)")
    return acquirer_id.lstrip("0") or "0"


async def add_network(store: StoreInterface, hsm: HsmApi, keys: IssuerKeys, acquirer_id: str, name: str) -> dict[str, Any]:
    """Register an acquiring network by its DE 32 id, with its own DUKPT key: every message of its
    connection is MACed under it, and every answer. Returns the key material for the network's host
    (initial KSN and IPEK, shown once, as for a terminal); its merchants are added with `add_network_merchant`."""
    acq = _acquirer(acquirer_id)
    if acq in (OWN_ACQUIRER, "0"):
        raise InvalidRequest(f"acquirer id {acquirer_id} is our own terminals' (DE 32 000001); choose another")
    if not name.strip():
        raise InvalidRequest("a network needs a name")
    if await issuing.config.get(store, f"network.{acq}") is not None:
        raise InvalidRequest(f"network {acq} is already registered; its key and merchants stay as they are")
    ksn = await issuing.terminals.allocate_initial_ksn(store, keys)
    ipek = await hsm.inject_ipek(keys.bdk, ksn)
    await issuing.config.put(
        store, f"network.{acq}", json.dumps({"name": name.strip(), "bdk_kcv": keys.bdk, "initial_ksn": ksn})
    )
    return {"acquirer_id": acq, "name": name.strip(), "key_scheme": "dukpt-tdes", "bdk_kcv": keys.bdk,
            "initial_ksn": ksn, "ipek": ipek}


async def network_key(store: StoreInterface, acquirer_id: str) -> tuple[str, str] | None:
    """(BDK KCV, initial KSN) of a registered network's connection, or None."""
    raw = await issuing.config.get(store, f"network.{acquirer_id}")
    if raw is None:
        return None
    entry = json.loads(raw)
    if not entry.get("bdk_kcv") or not entry.get("initial_ksn"):
        return None
    return entry["bdk_kcv"], entry["initial_ksn"]


async def add_network_merchant(
    store: StoreInterface, acquirer_id: str, *, terminal_id: str, merchant_id: str, mcc: str, name: str = "Merchant",
    location: str = "",
) -> dict[str, Any]:
    """Register one of a network's merchants (DE 42) with its terminal (DE 41): the engine takes a network's
    request only for a terminal registered for that network, and only with that terminal's merchant."""
    acq = _acquirer(acquirer_id)
    key = await network_key(store, acq)
    if key is None:
        raise InvalidRequest(f"network {acq} is not registered; `processor settle network add --acquirer {acq} --name ...`")
    issuing.terminals.check_terminal_fields(terminal_id, merchant_id, mcc)
    if await issuing.terminals.get(store, terminal_id) is not None:
        raise InvalidRequest(f"terminal {terminal_id} is already registered; choose another terminal id")
    if await issuing.merchants.get(store, merchant_id) is None:
        await issuing.merchants.add(store, merchant_id=merchant_id, name=name, location=location, mcc=mcc)
    bdk_kcv, ksn = key
    await issuing.terminals.create(
        store, terminal_id=terminal_id, merchant_id=merchant_id, key_scheme=f"{NETWORK_SCHEME}{acq}", bdk_kcv=bdk_kcv,
        initial_ksn=ksn,
    )
    return {"acquirer_id": acq, "terminal_id": terminal_id, "merchant_id": merchant_id, "mcc": mcc}


async def network_name(store: StoreInterface, acquirer_id: str) -> str | None:
    raw = await issuing.config.get(store, f"network.{acquirer_id}")
    return json.loads(raw)["name"] if raw else None

"""Chip personalization: the record a card bureau receives to write a card's chip.

The issuer and the bureau share an AES transport key formed in a key ceremony from clear components
(`processor bureau key`). The HSM seals the card's PAN, iCVV and ICC master key under that key
(`personalization_data`), so the record the issuer writes holds nothing readable without it.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hsm_sim import HsmApi
from processor.errors import ConfigurationError, InvalidRequest
from processor.issuing import cards, config
from processor.issuing.keys import IssuerKeys
from processor.ledger import StoreInterface
from processor.iso8583 import chip_service_code

BUREAU_KEK_CONFIG = "key.bureau_kek"
BUREAU_FORMAT = "card-bureau 1"
DEFAULT_BUREAU_DIR = "card-bureau"
VISA_DEBIT_AID = "A0000000031010"


@dataclass(frozen=True, slots=True)
class BureauRecord:
    """One card for the bureau: public data in clear, secrets sealed under the transport key."""

    format: str
    card_id: int
    token: str
    last4: str
    psn: str
    expiry: str
    service_code: str
    aid: str
    label: str
    cardholder_name: str
    cvn: int
    contactless: bool
    transport_key_kcv: str
    sealed_card: str
    sealed_icc_mk: str

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


async def form_bureau_key(store: StoreInterface, hsm: HsmApi, components: list[str] | None = None) -> dict[str, Any]:
    """Key ceremony: the transport key shared with the bureau, from two clear components.

    With no components given, two random ones are drawn and returned once: each goes to its
    custodian, and the bureau loads their XOR.
    """
    shown = components is None
    components = components or [secrets.token_hex(32).upper(), secrets.token_hex(32).upper()]
    if len(components) < 2:
        raise InvalidRequest("a transport key needs at least two components")
    info = await hsm.form_key_from_components("KEK", components, "AES")
    await config.put(store, BUREAU_KEK_CONFIG, info.kcv)
    result: dict[str, Any] = {"kcv": info.kcv}
    if shown:
        result["components"] = components
    return result


async def record_bureau_key(store: StoreInterface, hsm: HsmApi, kcv: str) -> dict[str, Any]:
    """Use as the bureau's transport key an AES KEK that custodians formed (or imported) in the HSM."""
    info = await hsm.key_info(kcv)
    if info.key_type != "KEK" or info.algorithm != "AES" or info.origin not in ("components", "imported"):
        raise InvalidRequest(
            f"key {info.kcv} is a {info.algorithm} {info.key_type} ({info.origin}); the bureau's transport key is an AES KEK "
            "formed by two custodians (hsm-sim keys component KEK --algorithm AES ...) or imported"
        )
    await config.put(store, BUREAU_KEK_CONFIG, info.kcv)
    return {"kcv": info.kcv}


def bureau_path(directory: str | os.PathLike[str], card_id: int) -> Path:
    return Path(directory) / f"card-{card_id}.json"


async def _transport_key(store: StoreInterface) -> str:
    """The KCV of the transport key shared with the bureau (a ConfigurationError before the ceremony)."""
    kek = await config.get(store, BUREAU_KEK_CONFIG)
    if kek is None:
        raise ConfigurationError("no transport key shared with the card bureau: run `processor bureau key` first")
    return kek


def _record(sealed: dict[str, str], **public: Any) -> BureauRecord:
    """A Visa debit application's record: `public` in clear, the HSM's sealed values as they came."""
    return BureauRecord(
        format=BUREAU_FORMAT,
        aid=VISA_DEBIT_AID,
        label="VISA DEBIT",
        transport_key_kcv=sealed["transport_key"],
        sealed_card=sealed["card"],
        sealed_icc_mk=sealed["icc_mk"],
        **public,
    )


async def personalize(
    store: StoreInterface,
    hsm: HsmApi,
    keys: IssuerKeys,
    card_id: int,
    *,
    directory: str | os.PathLike[str] = DEFAULT_BUREAU_DIR,
    cvn: int = 18,
    contactless: bool = True,
    cardholder_name: str = "CARDHOLDER",
) -> tuple[BureauRecord, Path]:
    """Write the bureau record of an issued card; returns it and where it was written."""
    kek = await _transport_key(store)
    if cvn not in (10, 18):
        raise InvalidRequest("cryptogram version must be 10 or 18")
    card = await cards.get(store, card_id)
    if card.status in ("closed", "lost", "stolen"):
        raise InvalidRequest(f"card {card_id} is {card.status}: it cannot be personalized")
    if not chip_service_code(card.service_code):
        raise InvalidRequest(
            f"card {card_id} is magstripe-only (service code {card.service_code}): it has no chip to personalize"
        )
    sealed = await hsm.personalization_data(
        keys.imk_ac, keys.cvk, card.sealed_pan, card.data_key_version, card.psn, card.expiry, kek, cvn=cvn
    )
    record = _record(
        sealed,
        card_id=card_id,
        token=card.token,
        last4=card.last4,
        psn=card.psn,
        expiry=card.expiry,
        service_code=card.service_code,
        cardholder_name=cardholder_name.upper()[:26],
        cvn=cvn,
        contactless=contactless,
    )
    return record, _write(bureau_path(directory, card_id), record)


def wallet_path(directory: str | os.PathLike[str], token_id: int) -> Path:
    return Path(directory) / f"wallet-{token_id}.json"


async def personalize_wallet(
    store: StoreInterface,
    hsm: HsmApi,
    keys: IssuerKeys,
    *,
    token_id: int,
    sealed_token: str,
    data_key_version: int,
    token_last4: str,
    expiry: str,
    directory: str | os.PathLike[str] = DEFAULT_BUREAU_DIR,
    cvn: int = 18,
) -> tuple[BureauRecord, Path]:
    """The device's copy of a payment token: token PAN, its iCVV and its own cryptogram key, sealed.

    The token's ICC master key is derived from the issuer's IMK-AC and the token PAN (PSN 00), which is
    exactly the key the engine verifies token cryptograms with; a wallet only ever taps (contactless).
    """
    kek = await _transport_key(store)
    sealed = await hsm.personalization_data(
        keys.imk_ac, keys.cvk, sealed_token, data_key_version, "00", expiry, kek, cvn=cvn
    )
    record = _record(
        sealed,
        card_id=token_id,
        token=f"token-{token_id}",
        last4=token_last4,
        psn="00",
        expiry=expiry,
        service_code="201",
        cardholder_name="WALLET",
        cvn=cvn,
        contactless=True,
    )
    return record, _write(wallet_path(directory, token_id), record)


def _write(path: Path, record: BureauRecord) -> Path:
    """Atomically, readable by its owner only from the first byte (a folder made here is 0700)."""
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True)
    tmp = path.with_suffix(".tmp")
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as fh:
        fh.write(json.dumps(record.as_json(), indent=1))
    os.replace(tmp, path)
    return path

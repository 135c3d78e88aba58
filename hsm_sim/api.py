"""`HsmApi`: the HSM's host commands as one typed interface, met by `Hsm` (in process) and `HsmClient` (TCP).

Callers type their HSM parameter with it (`hsm: HsmApi`) and work unchanged with either.
"""

from __future__ import annotations

from typing import Any, Protocol

from hsm_sim.crypto.pin import DEFAULT_DECIMALIZATION
from hsm_sim.hsm import KEY_PAGE, KeyCeremony, RequestChecks, TokenizedPan
from hsm_sim.keystore import KeyInfo


class HsmApi(Protocol):
    """Every host command (see PROTOCOL.md for codes and statuses); a refusal raises `HsmError`."""

    # key management
    async def generate_key(self, key_type: str, algorithm: str = "TDES", *, key_bits: int | None = None) -> KeyInfo: ...
    async def import_key(self, key_type: str, key_block: str, zmk: str) -> KeyInfo: ...
    async def export_key(self, kcv: str, zmk: str, *, version: str | None = None) -> str: ...
    async def form_key_from_components(self, key_type: str, components: list[str], algorithm: str = "TDES") -> KeyInfo: ...
    async def add_key_component(
        self, key_type: str, component: str, algorithm: str = "TDES", *, ceremony: str | None = None
    ) -> KeyCeremony: ...
    async def key_info(self, kcv: str) -> KeyInfo: ...
    async def list_keys(self, key_type: str | None = None, *, offset: int = 0, limit: int = KEY_PAGE) -> list[KeyInfo]: ...

    # PIN
    async def generate_pin_verification(
        self,
        pin_value: str,
        pan: str,
        pvk: str,
        method: str = "pvv",
        *,
        pvki: int = 1,
        validation_data: str | None = None,
        dectab: str = DEFAULT_DECIMALIZATION,
    ) -> str: ...
    async def translate_pin(
        self, pin_block: str, pan: str, source_key: str, source_format: int, dest_key: str, dest_format: int, *, ksn: str | None = None
    ) -> str: ...
    async def verify_pin(
        self,
        pin_block: str,
        pan: str,
        pin_key: str,
        pin_format: int,
        pvk: str,
        *,
        method: str,
        verification_value: str,
        ksn: str | None = None,
        pvki: int = 1,
        validation_data: str | None = None,
        dectab: str = DEFAULT_DECIMALIZATION,
    ) -> bool: ...

    # card verification values
    async def generate_cvv(self, cvk: str, pan: str, expiry_yymm: str, service_code: str) -> str: ...
    async def verify_cvv(self, cvk: str, pan: str, expiry_yymm: str, service_code: str, cvv: str) -> bool: ...

    # DUKPT initial keys for key-loading devices
    async def inject_ipek(self, bdk: str, ksn: str) -> str: ...
    async def inject_aes_initial_key(self, bdk: str, initial_key_id: str) -> str: ...

    # EMV
    async def verify_arqc(
        self,
        imk: str,
        pan: str,
        psn: str,
        atc: str,
        arqc: str,
        transaction_data: str,
        *,
        cvn: int,
        unpredictable_number: str | None = None,
        arc: str | None = None,
        csu: str | None = None,
    ) -> tuple[bool, str | None]: ...
    async def personalization_data(
        self,
        imk: str,
        cvk: str,
        sealed_pan: str,
        data_key_version: int,
        psn: str,
        expiry_yymm: str,
        transport_key: str,
        *,
        cvn: int,
    ) -> dict[str, str]: ...

    # MAC
    async def generate_mac(self, key: str, data: bytes, *, algorithm: str | None = None, ksn: str | None = None) -> str: ...
    async def verify_mac(
        self, key: str, data: bytes, mac_value: str, *, algorithm: str | None = None, ksn: str | None = None
    ) -> bool: ...
    async def verify_request(
        self,
        key: str,
        data: bytes,
        mac_value: str,
        *,
        ksn: str | None = None,
        pan: str | None = None,
        cvk: str | None = None,
        cvvs: list[list[str]] | None = None,
    ) -> RequestChecks: ...

    # tokenization
    async def tokenize_pan(self, pan: str) -> TokenizedPan: ...
    async def fingerprint_pan(self, pan: str) -> list[tuple[int, str]]: ...
    async def fingerprint_pans(self, pans: list[str]) -> list[list[tuple[int, str]]]: ...
    async def reveal_pan(self, sealed_pan: str, data_key_version: int, *, operator: str, reason: str) -> str: ...
    async def reseal_pan(self, sealed_pan: str, data_key_version: int) -> TokenizedPan: ...
    async def rotate_tokenization_keys(self) -> tuple[int, int]: ...

    async def diagnostics(self) -> dict[str, Any]: ...
    async def who_am_i(self) -> dict[str, Any]: ...
    async def close(self) -> None: ...


async def all_keys(hsm: HsmApi, key_type: str | None = None) -> list[KeyInfo]:
    """Every key's information (of one type, or all), page by page: `list_keys` answers a page at a time."""
    found: list[KeyInfo] = []
    while True:
        page = await hsm.list_keys(key_type, offset=len(found), limit=KEY_PAGE)
        found.extend(page)
        if len(page) < KEY_PAGE:
            return found

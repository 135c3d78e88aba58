"""The HSM as the processor uses it: the host commands it calls, typed.

`hsm_sim.connect(url)` gives an in-process `Hsm` or an `HsmClient` talking to `hsm-sim serve`; both answer
these coroutines. The keys are named by their KCV; clear keys, PINs and PANs stay inside the HSM apart from
what a command returns by design (a new card's CVV2, an audited reveal).
"""

from __future__ import annotations

from typing import Protocol

from hsm_sim import KeyInfo, TokenizedPan


class HsmInterface(Protocol):
    """The host commands of the HSM that the engine, issuing and tokenization call."""

    async def generate_key(self, key_type: str, algorithm: str = "TDES") -> KeyInfo: ...

    async def form_key_from_components(
        self, key_type: str, components: list[str], algorithm: str = "TDES"
    ) -> KeyInfo: ...

    async def list_keys(self) -> list[KeyInfo]: ...

    async def generate_pin_verification(
        self,
        pin_value: str,
        pan: str,
        pvk: str,
        method: str = "pvv",
        *,
        pvki: int = 1,
        validation_data: str | None = None,
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
    ) -> bool: ...

    async def generate_cvv(self, cvk: str, pan: str, expiry_yymm: str, service_code: str) -> str: ...

    async def verify_cvv(self, cvk: str, pan: str, expiry_yymm: str, service_code: str, cvv: str) -> bool: ...

    async def inject_ipek(self, bdk: str, ksn: str) -> str: ...

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
        arc: str | None = None,
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
    ) -> dict[str, str]: ...

    async def tokenize_pan(self, pan: str) -> TokenizedPan: ...

    async def fingerprint_pan(self, pan: str) -> list[tuple[int, str]]: ...

    async def reveal_pan(self, sealed_pan: str, data_key_version: int, *, operator: str, reason: str) -> str: ...

    async def reseal_pan(self, sealed_pan: str, data_key_version: int) -> TokenizedPan: ...

    async def rotate_tokenization_keys(self) -> tuple[int, int]: ...

    async def close(self) -> None: ...

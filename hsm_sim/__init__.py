"""A software HSM: LMK-protected key store, PIN, CVV, DUKPT, EMV, MAC and tokenization commands.

    from hsm_sim import connect
    hsm = await connect("file:/var/lib/issuer/hsm.json")   # or "memory:", or "tcp://127.0.0.1:1500"
    info = await hsm.generate_key("CVK")
    cvv2 = await hsm.generate_cvv(info.kcv, "4761739001010010", "3012", "000")
"""

from __future__ import annotations

from typing import Any

from hsm_sim.api import HsmApi
from hsm_sim.errors import HsmError
from hsm_sim.hsm import COMMANDS, Hsm, TokenizedPan
from hsm_sim.keystore import KeyInfo

__all__ = ["COMMANDS", "Hsm", "HsmApi", "HsmClient", "HsmError", "KeyInfo", "TokenizedPan", "connect"]


async def connect(url: str | None) -> HsmApi:
    """An HSM by URL: "memory:" (ephemeral), "file:PATH" or a plain path (in process), "tcp://HOST:PORT"."""
    if not url or url == "memory:":
        return Hsm.ephemeral()
    if url.startswith("tcp://"):
        from hsm_sim.client import HsmClient

        host, _, port = url[len("tcp://") :].rstrip("/").rpartition(":")
        return await HsmClient.connect(host or "127.0.0.1", int(port))
    path = url[len("file:") :] if url.startswith("file:") else url
    return Hsm.open(path)


def __getattr__(name: str) -> Any:
    if name == "HsmClient":
        from hsm_sim.client import HsmClient

        return HsmClient
    raise AttributeError(name)

"""A software HSM: LMK-protected key store, PIN, CVV, DUKPT, EMV, MAC and tokenization commands.

    from hsm_sim import connect
    hsm = await connect("file:/var/lib/issuer/hsm.json")   # or "memory:", or "tcps://127.0.0.1:1500" with tls=
    info = await hsm.generate_key("CVK")
    cvv2 = await hsm.generate_cvv(info.kcv, "4761739001010010", "3012", "000")
"""

from __future__ import annotations

from typing import Any

from hsm_sim.access import ROLES, Identity
from hsm_sim.api import HsmApi, all_keys
from hsm_sim.errors import INVALID_INPUT, HsmError
from hsm_sim.hsm import COMMANDS, MAX_PAN_FINGERPRINTS, Hsm, KeyCeremony, RequestChecks, TokenizedPan
from hsm_sim.keystore import KeyInfo
from hsm_sim.pki import ClientTls, PkiError

# The key-store file's name in the working folder, for `hsm-sim` and for the processor's in-process HSM alike.
DEFAULT_KEYSTORE = "hsm-keystore.json"

__all__ = [
    "COMMANDS", "DEFAULT_KEYSTORE", "MAX_PAN_FINGERPRINTS", "ROLES", "ClientTls", "Hsm", "HsmApi", "HsmClient", "HsmError",
    "Identity", "KeyCeremony",
    "KeyInfo", "PkiError", "RequestChecks", "TokenizedPan", "all_keys", "connect",
]


async def connect(url: str | None, *, tls: ClientTls | None = None) -> HsmApi:
    """An HSM by URL.

    "memory:" (ephemeral), "file:PATH" or a plain path: in this process, with every right.
    "tcps://HOST:PORT": `hsm-sim serve`, over mutual TLS as the client whose certificate `tls` holds.
    "tcp://HOST:PORT": a server that authenticates no one (only the benchmark's baseline runs one).
    """
    if not url or url == "memory:":
        return Hsm.ephemeral()
    for scheme in ("tcps://", "tcp://"):
        if url.startswith(scheme):
            from hsm_sim.client import HsmClient

            host, _, port = url[len(scheme) :].rstrip("/").rpartition(":")
            if not port.isdigit():
                raise HsmError(INVALID_INPUT, f"HSM URL {url!r} needs a port: {scheme}HOST:PORT")
            host = host.strip("[]") or "127.0.0.1"
            if scheme == "tcp://":
                return await HsmClient.connect(host, int(port))
            if tls is None:
                raise HsmError(INVALID_INPUT, f"{url} is an authenticated HSM: give this client's certificate (ClientTls)")
            return await HsmClient.connect(host, int(port), tls=tls.context())
    path = url[len("file:") :] if url.startswith("file:") else url
    return Hsm.open(path)


def __getattr__(name: str) -> Any:
    if name == "HsmClient":
        from hsm_sim.client import HsmClient

        return HsmClient
    raise AttributeError(name)

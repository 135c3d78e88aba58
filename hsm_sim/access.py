"""Who may do what: each client's identity, and the fixed list of commands each role may run.

The HSM decides, not its caller. A client of `hsm-sim serve` is the subject of its certificate: the
common name is who it is, the organizational unit its role. The in-process HSM (`Hsm.open`,
`Hsm.ephemeral`) serves the process that holds its key store, as the local identity with every right.
"""

from __future__ import annotations

import contextvars
import re
from dataclasses import dataclass

# Every role reads key information and asks who it is; beyond that each has only what its job needs.
_EVERYONE = frozenset({"who_am_i", "key_info", "list_keys"})
ROLES: dict[str, frozenset[str]] = {
    # The authorization engine verifies what terminals and cards send; nothing it runs returns a clear
    # key, PIN or IPEK, nor a value a card would carry (CVV, PVV).
    "engine": _EVERYONE
    | {"verify_pin", "verify_cvv", "verify_arqc", "generate_mac", "verify_mac", "verify_request", "fingerprint_pan",
       "fingerprint_pans", "tokenize_pan"},
    # Card issuance and the PAN vault: vault a new card's PAN, compute its CVVs and PIN verification
    # value, seal the bureau's personalization record, and rotate and re-seal the vault's keys.
    "issuer": _EVERYONE
    | {
        "tokenize_pan", "fingerprint_pan", "fingerprint_pans", "reseal_pan", "rotate_tokenization_keys", "generate_cvv",
        "generate_pin_verification", "personalization_data",
    },
    # A person who may see one card's PAN, with a reason, and nothing else.
    "operator": frozenset({"who_am_i", "reveal_pan"}),
    # Key management; forming a key from components takes two different custodians (add_key_component).
    "custodian": _EVERYONE | {"generate_key", "import_key", "export_key", "add_key_component", "diagnostics"},
    # The key-loading device that injects terminals' DUKPT initial keys.
    "key-loader": _EVERYONE | {"inject_ipek", "inject_aes_initial_key"},
}
ROLE_NAMES = tuple(ROLES)
# Names go into audit lines and file names unescaped: letters, digits, dot, dash, underscore.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated client: its name and role, and the serial number of its certificate (hex)."""

    name: str
    role: str
    serial: str = ""

    def may(self, command: str) -> bool:
        return self is LOCAL or command in ROLES.get(self.role, ())


LOCAL = Identity("local", "local")
# The identity the current command runs for; the server sets it around each command it executes.
CALLER: contextvars.ContextVar[Identity] = contextvars.ContextVar("hsm_sim_caller", default=LOCAL)


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"name {name!r} must be 1 to 64 letters, digits, '.', '-' or '_', starting with a letter or digit")
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"role {role!r} is not one of {', '.join(ROLE_NAMES)}")
    return role

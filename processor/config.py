"""Runtime settings, read from the environment (and overridden by CLI flags)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from processor.errors import ConfigurationError

if TYPE_CHECKING:
    from hsm_sim import HsmApi

DEFAULT_DB_FILE = "processor.db"
DEFAULT_HSM_FILE = "processor-hsm.json"


def _sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


@dataclass(frozen=True, slots=True)
class Settings:
    """Where the processor keeps its data and finds its HSM and broker."""

    db_url: str
    hsm_url: str
    mqtt_url: str | None = None
    log_dir: Path = field(default_factory=Path.cwd)
    log_file: Path | None = None
    hsm_tls_dir: Path | None = None

    @classmethod
    def from_env(cls, workdir: Path | None = None) -> "Settings":
        """PROCESSOR_DB_URL, PROCESSOR_HSM_URL (+ PROCESSOR_HSM_TLS_DIR), PROCESSOR_MQTT_URL; defaults live in the working directory."""
        base = (workdir or Path.cwd()).resolve()
        return cls(
            db_url=os.environ.get("PROCESSOR_DB_URL") or _sqlite_url(base / DEFAULT_DB_FILE),
            hsm_url=os.environ.get("PROCESSOR_HSM_URL") or f"file:{base / DEFAULT_HSM_FILE}",
            mqtt_url=os.environ.get("PROCESSOR_MQTT_URL") or None,
            log_dir=Path(os.environ.get("PROCESSOR_LOG_DIR") or base),
            log_file=Path(os.environ["PROCESSOR_LOG_FILE"]) if os.environ.get("PROCESSOR_LOG_FILE") else None,
            hsm_tls_dir=Path(os.environ["PROCESSOR_HSM_TLS_DIR"]) if os.environ.get("PROCESSOR_HSM_TLS_DIR") else None,
        )


async def open_hsm(settings: Settings, role: str = "engine", *, name: str | None = None) -> "HsmApi":
    """The HSM the settings name. A `tcps://` HSM (`hsm-sim serve`) is reached with the certificate
    `<name>.pem` in PROCESSOR_HSM_TLS_DIR, by default the one named after the role the command needs
    (engine, issuer, custodian, key-loader); an operator's is their own name."""
    from hsm_sim import ClientTls, PkiError, connect

    if not settings.hsm_url.startswith("tcps://"):
        return await connect(settings.hsm_url)
    if settings.hsm_tls_dir is None:
        raise ConfigurationError(
            f"{settings.hsm_url} is an authenticated HSM: set PROCESSOR_HSM_TLS_DIR to the folder with ca.pem and "
            "this processor's certificates (hsm-sim ca issue DIR --role ROLE --name ROLE)"
        )
    try:
        tls = ClientTls.from_dir(settings.hsm_tls_dir, name or role)
    except (PkiError, ValueError) as exc:
        raise ConfigurationError(f"no HSM certificate for {name or role}: {exc}") from None
    return await connect(settings.hsm_url, tls=tls)

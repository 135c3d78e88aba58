"""Runtime settings, read from the environment (and overridden by CLI flags)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from hsm_sim import DEFAULT_KEYSTORE
from processor.errors import ConfigurationError

if TYPE_CHECKING:
    from hsm_sim import HsmApi

DEFAULT_DB_FILE = "processor.db"
DEFAULT_HSM_FILE = DEFAULT_KEYSTORE  # the same file `hsm-sim` opens by default
DB_DRIVERS = ("sqlite+aiosqlite", "postgresql+asyncpg")

# What `processor --help` lists: every variable the processor reads.
ENVIRONMENT = (
    ("PROCESSOR_DB_URL", f"database URL: sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER@HOST:PORT/DB (default ./{DEFAULT_DB_FILE})"),
    ("PROCESSOR_HSM_URL", f"HSM: file:PATH, memory: or tcps://HOST:PORT (default file:./{DEFAULT_HSM_FILE})"),
    ("PROCESSOR_HSM_TLS_DIR", "for a tcps:// HSM: folder with ca.pem and this processor's ROLE.pem/ROLE.key"),
    ("PROCESSOR_MQTT_URL", "the engine's broker account mqtt://engine:PASSWORD@HOST:PORT (default: none)"),
    ("PROCESSOR_EVENTS_MQTT_URL", "the events account mqtt://events:PASSWORD@HOST:PORT for `events publish` and `serve` (default: none)"),
    ("PROCESSOR_PG_WRITERS", "on PostgreSQL, how many connections of `processor serve` commit batches, 1 to 16 (default 2)"),
    ("PROCESSOR_BROKER_DIR", "the broker's folder for `processor broker` (default ./broker)"),
    ("PROCESSOR_LOG_FILE", "where `processor serve` writes its log (default: standard error)"),
    ("PROCESSOR_LOG_DIR", "folder for logs the processor writes (default: the working folder)"),
    ("HSM_LMK_FILE", "the in-process HSM's LMK file (default ~/.local/share/hsm-sim/lmk.json)"),
    ("HSM_LMK_PASSPHRASE", "derive the LMK from this passphrase instead (at least 12 characters)"),
)


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

    def check(self) -> None:
        """Refuse a database or HSM URL that cannot work, before anything is opened or created."""
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            driver = make_url(self.db_url).drivername
        except ArgumentError:
            raise ConfigurationError(
                f"database URL {self.db_url!r} cannot be read: write sqlite+aiosqlite:///PATH or "
                "postgresql+asyncpg://USER@HOST:PORT/DB (--db or PROCESSOR_DB_URL)"
            ) from None
        if driver not in DB_DRIVERS:
            raise ConfigurationError(
                f"database URL {self.db_url!r}: the driver must be one of {', '.join(DB_DRIVERS)}, not {driver}"
            )
        if self.hsm_url.startswith("file:"):
            folder = Path(self.hsm_url[len("file:"):]).expanduser().absolute().parent
            if not folder.is_dir():
                raise ConfigurationError(
                    f"HSM key store {self.hsm_url}: the folder {folder} does not exist; create it or give another --hsm"
                )
        elif not (self.hsm_url == "memory:" or self.hsm_url.startswith(("tcps://", "tcp://"))):
            raise ConfigurationError(f"HSM URL {self.hsm_url!r}: write file:PATH, memory: or tcps://HOST:PORT (--hsm or PROCESSOR_HSM_URL)")

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

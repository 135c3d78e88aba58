"""Runtime settings, read from the environment (and overridden by CLI flags)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

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

    @classmethod
    def from_env(cls, workdir: Path | None = None) -> "Settings":
        """PROCESSOR_DB_URL, PROCESSOR_HSM_URL, PROCESSOR_MQTT_URL; defaults live in the working directory."""
        base = (workdir or Path.cwd()).resolve()
        return cls(
            db_url=os.environ.get("PROCESSOR_DB_URL") or _sqlite_url(base / DEFAULT_DB_FILE),
            hsm_url=os.environ.get("PROCESSOR_HSM_URL") or f"file:{base / DEFAULT_HSM_FILE}",
            mqtt_url=os.environ.get("PROCESSOR_MQTT_URL") or None,
            log_dir=Path(os.environ.get("PROCESSOR_LOG_DIR") or base),
            log_file=Path(os.environ["PROCESSOR_LOG_FILE"]) if os.environ.get("PROCESSOR_LOG_FILE") else None,
        )

"""The HSM's audit log: one JSON line per command and per refusal, never a key, PIN, PAN or CVV.

    {"t": "2026-12-01T09:30:00.123+00:00", "by": "engine-1", "role": "engine", "cmd": "verify_cvv",
     "status": "00", "keys": ["9B1B4F"]}
    {"t": ..., "by": "anonymous", "role": "-", "peer": "10.0.0.7:51522", "cmd": "export_key",
     "status": "17", "why": "no client certificate"}

`by` is the client's certificate name (`local` for the process that opened the key store itself), `cmd`
the command, or `connect` for a connection refused before it sent one. Status `17` marks a refusal of
the client, with `why`. `hsm-sim audit` reads the file.

The file is bounded: when the next line would take it over `max_bytes` (HSM_AUDIT_MAX_BYTES, default
64 MiB) it is renamed `<file>.1` (the older ones shift to `.2` ... up to `keep`, HSM_AUDIT_KEEP, default
8; the oldest is dropped) and a new file is begun, so the log never holds more than (keep + 1) x
max_bytes and the newest lines are never lost.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hsm_sim.errors import NOT_PERMITTED
from hsm_sim.files import open_private_append

MEMORY_LINES = 10_000
MAX_BYTES = 64 * 1024 * 1024
KEEP = 8

log = logging.getLogger("hsm_sim.audit")


def _env_int(name: str, default: int, lowest: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or int(raw) < lowest:
        raise ValueError(f"{name}={raw!r} must be a whole number of at least {lowest}")
    return int(raw)


def _plain(value: Any) -> bool:
    """A value that goes into a line unescaped: statuses and their comma-separated lists (the keyword names
    are the HSM's own)."""
    return isinstance(value, str) and value.isascii() and value.replace(",", "").isalnum()


def rotated(path: Path, keep: int = KEEP) -> list[Path]:
    """The log's files that exist, oldest first: <file>.keep ... <file>.1, <file>."""
    names = [path.with_name(f"{path.name}.{n}") for n in range(keep, 0, -1)] + [path]
    return [p for p in names if p.exists()]


class AuditLog:
    """Appends lines to a 0600 file (or keeps the last MEMORY_LINES in memory for an ephemeral HSM).

    Lines are buffered and flushed within FLUSH_INTERVAL_S (and at close): a system call per command
    would cost more than the command itself. Refusals are flushed at once.
    """

    FLUSH_INTERVAL_S = 0.05

    def __init__(self, path: Path | None, *, max_bytes: int | None = None, keep: int | None = None) -> None:
        self.path = path
        self.max_bytes = max_bytes if max_bytes is not None else _env_int("HSM_AUDIT_MAX_BYTES", MAX_BYTES, 4096)
        self.keep = keep if keep is not None else _env_int("HSM_AUDIT_KEEP", KEEP, 1)
        self.memory: collections.deque[str] = collections.deque(maxlen=MEMORY_LINES)
        self._fh = open_private_append(path) if path else None
        self._size = os.fstat(self._fh.fileno()).st_size if self._fh else 0
        self._lock = threading.Lock()
        self._flush_pending = False
        self._stamp_ms = -1
        self._stamp = ""

    def write(self, by: str, role: str, command: str, status: str, kcvs: tuple[str, ...], **extra: Any) -> None:
        """A command's line; names, roles, commands and statuses are ours and safe to write unescaped."""
        now = self._now()
        if not all(k.isalnum() and k.isascii() for k in kcvs) or not all(_plain(v) for v in extra.values()):
            record = {"t": now, "by": by, "role": role, "cmd": command, "status": status, **({"keys": kcvs} if kcvs else {}), **extra}
            line = json.dumps(record, separators=(",", ":"))
        else:
            keys = ',"keys":[' + ",".join(f'"{k}"' for k in kcvs) + "]" if kcvs else ""
            more = "".join(f',"{name}":"{value}"' for name, value in extra.items())
            line = f'{{"t":"{now}","by":"{by}","role":"{role}","cmd":"{command}","status":"{status}"{keys}{more}}}'
        self._append(line)

    def refusal(self, by: str, role: str, command: str, why: str, *, peer: str = "") -> None:
        """A refused client: who (or `anonymous`), what it tried, why; flushed at once."""
        record = {"t": self._now(), "by": by, "role": role}
        if peer:
            record["peer"] = peer
        record.update({"cmd": command, "status": NOT_PERMITTED, "why": why[:300]})
        self._append(json.dumps(record, separators=(",", ":")))
        self.flush()

    def _now(self) -> str:
        """The time to the millisecond; formatting it costs more than the line, so once per millisecond."""
        ms = time.time_ns() // 1_000_000
        if ms != self._stamp_ms:
            self._stamp_ms = ms
            self._stamp = dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds")
        return self._stamp

    def _append(self, line: str) -> None:
        if self._fh is None:
            self.memory.append(line)
            return
        size = len(line) + 1  # JSON is ASCII: characters are bytes
        with self._lock:
            if self._size + size > self.max_bytes and self._size:
                self._rotate()
            self._fh.write(line + "\n")
            self._size += size
        self._schedule_flush()

    def _rotate(self) -> None:
        """Close the full file, shift the older ones up (dropping the oldest beyond `keep`), begin a new one."""
        assert self._fh is not None and self.path is not None
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        path = self.path

        def numbered(n: int) -> Path:
            return path.with_name(f"{path.name}.{n}")

        for n in range(self.keep - 1, 0, -1):  # .keep-1 replaces .keep (the oldest goes), ... .1 becomes .2
            if numbered(n).exists():
                os.replace(numbered(n), numbered(n + 1))
        os.replace(path, numbered(1))
        self._fh = open_private_append(path)
        self._size = 0
        log.info("audit log %s reached %d bytes: continued in a new file, the previous one is %s.1", path, self.max_bytes, path.name)

    def flush(self) -> None:
        self._flush_pending = False
        if self._fh is not None:
            with self._lock:
                self._fh.flush()

    def _schedule_flush(self) -> None:
        if self._flush_pending:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._flush_pending = True
        loop.call_later(self.FLUSH_INTERVAL_S, self.flush)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            self._fh.close()
            self._fh = None


def read(path: Path, *, refusals_only: bool = False, who: str | None = None, since: str | None = None) -> Iterator[dict[str, Any]]:
    """The log's records (its rotated files first), oldest first, filtered; a line that is not JSON is
    reported as such, not skipped."""
    for part in rotated(path):
        with open(part, encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                try:
                    record = json.loads(line)
                except ValueError:
                    yield {"t": "?", "by": "?", "cmd": "?", "status": "??", "why": f"line {number} of {part} is not JSON"}
                    continue
                if refusals_only and record.get("status") != NOT_PERMITTED:
                    continue
                if who is not None and record.get("by") != who:
                    continue
                if since is not None and record.get("t", "") < since:
                    continue
                yield record

"""Files that hold keys or card data: owner-only, written whole or not at all.

terminal_sim keeps its counters with `write_private` too: a DUKPT counter or ATC that went back after a
crash would be reused, so its state files need the same durability as a key store.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TextIO


def private_dir(path: Path) -> Path:
    """The folder, created 0700 (with its missing parents) when it does not exist; an existing one is left as is."""
    missing = []
    folder = path
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for folder in reversed(missing):
        folder.mkdir(mode=0o700)
        os.chmod(folder, 0o700)  # mkdir's mode is masked by the umask
    return path


def write_private(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Write atomically (temporary file in the same folder, fsync, rename, fsync of the folder) with
    `mode` from the start."""
    private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    folder = os.open(path.parent, os.O_RDONLY)  # the rename itself reaches the disk
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def open_private_append(path: Path) -> TextIO:
    """A text file opened for appending, created 0600 (an existing file keeps its mode)."""
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    return os.fdopen(fd, "a", encoding="utf-8")

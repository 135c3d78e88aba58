"""The day's files: settlement (CSV and JSON, one row per transaction plus totals) and payouts (CSV).

Format `settlement-file/1`, the same content in both encodings:

- CSV `settlement-YYYY-MM-DD.csv`: a first line `#format=settlement-file/1,business_date=...`, a header line,
  then one `T` row per transaction (the `settlement_items` columns), then one `S` row per currency whose
  columns say count, net amount (signed, from the cardholder's side) and control sum (sum of absolute
  amounts) in minor units: `S,currency,count,net_minor,control_sum_minor`.
- JSON `settlement-YYYY-MM-DD.json`: {"format", "business_date", "settled_at", "transactions": [...],
  "totals": {currency: {"count", "net_minor", "control_sum_minor"}}}.
- CSV `payouts-YYYY-MM-DD.csv`: one row per merchant (what we pay) and per network (what we owe).

Each file is written to an unnamed temporary file (0600, O_TMPFILE) in the same folder, flushed to disk and
linked into place, so a reader never sees half a file and a killed run leaves no temporary file behind.
Where the file system refuses to link such a file, a named `.NAME.*.tmp` file is used instead, locked
(flock) while it is written; the next write of that file removes the ones no one holds (a killed run's).
A file that exists with other content is never replaced: the new content goes to the next free revision
(`settlement-YYYY-MM-DD.r2.csv`) and the result says so. The content depends only on settled rows, so a rerun finds its files identical and writes nothing.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import hashlib
import io
import json
import os
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from processor.settlement import queries
from processor.ledger import StoreInterface

FORMAT = "settlement-file/1"
PAGE = 5000


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def place_atomically(write: Callable[[Any], None], target: Path) -> dict[str, Any]:
    """Write through `write(binary file)` into a temp file, then rename it to `target` or its next revision.

    Returns {"path", "sha256", "written"}: written is False when an identical file was already there.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    if hasattr(os, "O_TMPFILE"):
        try:
            return _place_unnamed(write, target)
        except _CannotLink:
            pass  # this file system (or sandbox) cannot give an unnamed file a name: a locked named one then
    return _place_named(write, target)


class _CannotLink(Exception):
    """Linking an O_TMPFILE file into place is refused here."""


def _fsync_dir(folder: Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _next_free(target: Path, digest: str) -> tuple[int, Path, bool]:
    """(revision, path, already there): the first revision that is free or already holds this content."""
    revision, candidate = 1, target
    while candidate.exists():
        if _sha256(candidate) == digest:
            return revision, candidate, True
        revision += 1
        candidate = target.with_name(f"{target.stem}.r{revision}{target.suffix}")
    return revision, candidate, False


def _place_unnamed(write: Callable[[Any], None], target: Path) -> dict[str, Any]:
    # An O_TMPFILE file has no name until it is linked, so a process killed mid-write leaves nothing behind.
    fd = os.open(target.parent, os.O_TMPFILE | os.O_WRONLY, 0o600)
    with os.fdopen(fd, "wb") as f:
        digest = hashlib.sha256()

        class _Hashing:
            def write(self, data: bytes) -> int:
                digest.update(data)
                return f.write(data)

        write(_Hashing())
        f.flush()
        os.fsync(f.fileno())
        while True:
            revision, candidate, there = _next_free(target, digest.hexdigest())
            if there:
                return {"path": str(candidate), "sha256": digest.hexdigest(), "written": False}
            dir_fd = os.open(target.parent, os.O_RDONLY)
            try:
                # linkat() with AT_SYMLINK_FOLLOW (a dir fd makes os.link use it) gives the unnamed file a name;
                # it never replaces: a file that appeared meanwhile sends us to the next revision.
                os.link(f"/proc/self/fd/{f.fileno()}", candidate.name, dst_dir_fd=dir_fd, follow_symlinks=True)
            except FileExistsError:
                continue
            except OSError as exc:
                if exc.errno in (errno.EXDEV, errno.EPERM, errno.ENOENT, errno.EOPNOTSUPP, errno.EINVAL, errno.EACCES):
                    raise _CannotLink from None
                raise
            finally:
                os.close(dir_fd)
            _fsync_dir(target.parent)
            return {"path": str(candidate), "sha256": digest.hexdigest(), "written": True, "revision": revision}


def _remove_stale_temps(target: Path) -> None:
    """Temp files of `target` left by a killed run: a writer holds a lock on its temp file while it writes."""
    for path in target.parent.glob(f".{target.name}.*.tmp"):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a running writer's
        else:
            path.unlink(missing_ok=True)
        finally:
            os.close(fd)


def _locked_temp(target: Path) -> tuple[int, Path]:
    while True:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_nlink:
            return fd, Path(name)
        os.close(fd)  # taken for a killed run's between its creation and its lock: take another


def _place_named(write: Callable[[Any], None], target: Path) -> dict[str, Any]:
    _remove_stale_temps(target)
    fd, tmp = _locked_temp(target)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb", closefd=False) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        digest = _sha256(tmp)
        while True:
            revision, candidate, there = _next_free(target, digest)
            if there:
                return {"path": str(candidate), "sha256": digest, "written": False}
            try:
                os.link(tmp, candidate)  # never replaces: a file that appeared meanwhile sends us on
            except FileExistsError:
                continue
            _fsync_dir(target.parent)
            return {"path": str(candidate), "sha256": digest, "written": True, "revision": revision}
    finally:
        tmp.unlink(missing_ok=True)
        os.close(fd)


async def _pages(store: StoreInterface, key: str, progress: Callable[[str, int, int | None], None] | None) -> Any:
    after, done = 0, 0
    while True:
        page = await store.run_read(queries.items_page, key, after, PAGE)
        if not page:
            return
        yield page
        after = page[-1][0]
        done += len(page)
        if progress:
            progress("files", done, None)


def _row(values: tuple[Any, ...]) -> dict[str, Any]:
    row = dict(zip(queries.ITEM_COLUMNS, values))
    row["captured_at"] = row["captured_at"].isoformat() if row["captured_at"] else None
    return row


async def write_day_files(
    store: StoreInterface, key: str, out_dir: Any, *, progress: Callable[[str, int, int | None], None] | None = None
) -> dict[str, Any]:
    """Write (or find identical) the settlement CSV, JSON and payout files of a settled day."""
    folder = Path(out_dir or "settlement").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    day = await store.run_read(queries.day_row, key)
    summary = json.loads(day["summary"])
    header = f"#format={FORMAT},business_date={key},settled_at={summary['settled_at']}\n"
    # Both files are streamed page by page into their temp files, never held whole in memory.
    csv_tmp = tempfile.TemporaryFile(dir=folder)
    json_tmp = tempfile.TemporaryFile(dir=folder)
    totals: dict[str, dict[str, int]] = defaultdict(lambda: {"count": 0, "net_minor": 0, "control_sum_minor": 0})
    try:
        text = io.TextIOWrapper(csv_tmp, encoding="utf-8", newline="")
        text.write(header)
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["record", *queries.ITEM_COLUMNS])
        json_tmp.write(
            (f'{{"format": "{FORMAT}", "business_date": "{key}", "settled_at": "{summary["settled_at"]}", '
             '"transactions": [').encode()
        )
        first = True
        async for page in _pages(store, key, progress):
            chunk = []
            for values in page:
                row = _row(values)
                writer.writerow(["T", *row.values()])
                t = totals[row["currency"]]
                t["count"] += 1
                t["net_minor"] += row["amount_minor"]
                t["control_sum_minor"] += abs(row["amount_minor"])
                chunk.append(("" if first else ", ") + json.dumps(row))
                first = False
            json_tmp.write("".join(chunk).encode())
        for currency, t in sorted(totals.items()):
            writer.writerow(["S", currency, t["count"], t["net_minor"], t["control_sum_minor"]])
        text.flush()
        json_tmp.write(f'], "totals": {json.dumps(dict(sorted(totals.items())))}}}\n'.encode())
        out = {
            "settlement_csv": place_atomically(_copier(csv_tmp), folder / f"settlement-{key}.csv"),
            "settlement_json": place_atomically(_copier(json_tmp), folder / f"settlement-{key}.json"),
            "payouts_csv": place_atomically(_payouts(summary), folder / f"payouts-{key}.csv"),
        }
        text.detach()
    finally:
        csv_tmp.close()
        json_tmp.close()
    return out


def _copier(source: Any) -> Callable[[Any], None]:
    def write(f: Any) -> None:
        source.seek(0)
        for block in iter(lambda: source.read(1 << 20), b""):
            f.write(block)

    return write


def _payouts(summary: dict[str, Any]) -> Callable[[Any], None]:
    def write(f: Any) -> None:
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        text.write(f"#format=payouts/1,business_date={summary['business_date']}\n")
        writer.writerow(["payee_type", "payee", "currency", "gross_minor", "fee_minor", "interchange_minor", "net_minor",
                         "direction"])
        for m in summary["merchants"]:
            writer.writerow(["merchant", m["party"], m["currency"], m["gross_minor"], m["fee_minor"], m["interchange_minor"],
                             m["net_minor"], "we pay" if m["net_minor"] >= 0 else "merchant owes"])
        for n in summary["networks"]:
            writer.writerow(["network", n["party"], n["currency"], n["gross_minor"], 0, n["interchange_minor"],
                             n["net_minor"], "we pay" if n["net_minor"] >= 0 else "network owes"])
        f.write(text.getvalue().encode())

    return write


def iter_csv_transactions(path: Path) -> Iterator[dict[str, str]]:
    """The `T` rows of a settlement CSV as dicts (for checks and tests)."""
    with path.open(newline="", encoding="utf-8") as f:
        next(f)
        for row in csv.DictReader(f):
            if row["record"] == "T":
                yield row

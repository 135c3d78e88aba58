"""The business day: every scenario answers as an issuer must, and no secret reaches disk or a log."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest


def run_demo(workdir, db_url: str, *, seconds: str, cardholders: str, connections: str) -> dict:
    """`processor demo --json` in a subprocess; its summary, after checking it exited 0."""
    env = {**os.environ, "PROCESSOR_DB_URL": db_url, "PROCESSOR_HSM_URL": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "processor.cli", "demo", "--json", "--workdir", str(workdir),
         "--seconds", seconds, "--cardholders", cardholders, "--connections", connections],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    return json.loads(proc.stdout)


@pytest.mark.slow
def test_demo_day_and_nothing_secret_at_rest(tmp_path):
    summary = run_demo(tmp_path, "", seconds="2", cardholders="8", connections="4")
    bad = [s for s in summary["scenarios"] if not s["ok"]]
    assert bad == []
    assert summary["ledger"]["ok"]
    assert summary["load"]["count"] > 0
    # 61: the load's refunds name no purchase, and the issuer bounds those per merchant and day.
    assert set(summary["load"]["codes"]) <= {"00", "10", "51", "61"}

    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert "processor.db" in names and "processor.log" in names
    assert any(n.endswith(".audit.jsonl") for n in names)
    pan_like = re.compile(rb"(?<![0-9])(?:476173|489537)[0-9]{10}(?![0-9])")
    # Our BINs only: random hex key material in the key store can look like any 13 digits, a D and 7 more.
    track2_like = re.compile(rb"(?<![0-9A-F])(?:476173|489537)[0-9]{7,13}[=D][0-9]{7}")
    for path in files:
        blob = path.read_bytes()
        assert not pan_like.search(blob), f"a clear PAN in {path.name}"
        assert not track2_like.search(blob), f"track 2 data in {path.name}"
    log = (tmp_path / "processor.log").read_text()
    assert re.search(r"pan=476173\*{6}[0-9]{4} ", log), "authorizations are logged with masked PANs"


@pytest.mark.slow
@pytest.mark.postgres
def test_demo_day_on_postgresql_leaves_no_clear_pan_in_a_dump(pg_url, tmp_path):
    """The same day on PostgreSQL; then pg_dump of the whole database holds no PAN or track 2."""
    assert run_demo(tmp_path, pg_url, seconds="1", cardholders="4", connections="2")["ok"]
    plain = pg_url.replace("postgresql+asyncpg://", "postgresql://")
    dump = subprocess.run(["pg_dump", "--data-only", plain], capture_output=True, timeout=60, check=True).stdout
    assert b"COPY public.cards" in dump
    assert not re.search(rb"(?<![0-9])(?:476173|489537)[0-9]{10}(?![0-9])", dump), "a clear PAN in the PostgreSQL dump"
    assert not re.search(rb"[0-9]{13,19}[=D][0-9]{7}", dump), "track 2 data in the PostgreSQL dump"


"""A settlement run or an ingest killed with SIGKILL at random moments leaves nothing half-done: the
next run completes it, and the result is the one an uninterrupted run gives."""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
DAY = "2026-03-10"


def cli(workdir: Path, *args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "processor.cli", *args], cwd=workdir, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def finish(workdir: Path, *args: str, env: dict[str, str]) -> dict:
    proc = cli(workdir, *args, "--json", env=env)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return json.loads(out)


def environment(workdir: Path) -> dict[str, str]:
    return {**os.environ, "PROCESSOR_DB_URL": f"sqlite+aiosqlite:///{workdir / 'p.db'}",
            "PROCESSOR_HSM_URL": f"file:{workdir / 'hsm.json'}"}


def kill_repeatedly(workdir: Path, args: tuple[str, ...], env: dict[str, str], rng: random.Random, times: int) -> int:
    """Start the command and SIGKILL it at a random moment, `times` times; how many kills hit a live run."""
    hits = 0
    for _ in range(times):
        proc = cli(workdir, *args, env=env)
        time.sleep(rng.uniform(0.3, 3.0))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            hits += 1
        proc.communicate(timeout=60)
    return hits


def without_times(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in ("settled_at", "files", "jobs")}


def test_killed_settlement_runs_and_ingests_finish_with_the_uninterrupted_result(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    env = environment(base)
    finish(base, "init", env=env)
    finish(base, "settle", "generate", "--date", DAY, "--transactions", "40000", "--presentments", "6000",
           "--cards", "30", "--merchants", "25", "--clearing-file", str(base / "net.ipm"), env=env)
    reference = tmp_path / "reference"
    shutil.copytree(base, reference)
    ref_env = environment(reference)
    expected_ingest = finish(reference, "settle", "ingest", str(reference / "net.ipm"), env=ref_env)
    expected_run = finish(reference, "settle", "run", "--date", DAY, "--out", "files", env=ref_env)

    rng = random.Random(int(os.environ.get("KILL_SEED", "12")))
    hits = kill_repeatedly(base, ("settle", "ingest", str(base / "net.ipm")), env, rng, 5)
    hits += kill_repeatedly(base, ("settle", "run", "--date", DAY, "--out", "files"), env, rng, 6)
    assert hits >= 4, "the kills should land while the commands run"
    ingest = finish(base, "settle", "ingest", str(base / "net.ipm"), env=env)
    run = finish(base, "settle", "run", "--date", DAY, "--out", "files", env=env)

    for key in ("records", "by_status", "posted", "posted_minor", "exceptions"):
        assert ingest[key] == expected_ingest[key]
    assert without_times(run) == without_times(expected_run)
    assert run["items"] == 40000
    check = finish(base, "ledger", "check", env=env)
    assert check["ok"], check["report"]["failures"]
    for name in ("settlement_csv", "settlement_json", "payouts_csv"):
        path = Path(run["files"][name]["path"])
        assert path.parent == (base / "files").resolve() and ".r" not in path.name
        ref = Path(expected_run["files"][name]["path"])
        if name == "settlement_csv":
            # Same transactions, same order, same totals; the header's settled-at stamp and the item ids (the
            # killed runs interleaved with the ingest differently) are the only differences.
            def rows(p: Path) -> list[list[str]]:
                return [r[:1] + r[2:] for r in csv.reader(p.read_text().splitlines()[1:])]

            assert rows(path) == rows(ref)
        elif name == "settlement_json":
            got, want = json.loads(path.read_text()), json.loads(ref.read_text())
            for t in got["transactions"] + want["transactions"]:
                t.pop("id")
            assert (got["transactions"], got["totals"]) == (want["transactions"], want["totals"])
    assert not list((base / "files").glob(".*.tmp"))

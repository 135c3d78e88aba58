"""The money app from the command line: credentials, savings, and `processor api` serving as its own process."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import select
import socket
import subprocess
import sys
from pathlib import Path

import httpx
from api_helpers import AppEnv
from cli_helpers import run_cli
import sqlalchemy as sa

from processor.ledger.models import journal_entries


def run(workdir: Path, *args: str, stdin: str = "", check: bool = True) -> subprocess.CompletedProcess:
    proc = run_cli("processor", workdir, *args, stdin=stdin, env={**os.environ, "PROCESSOR_DB_URL": "", "PROCESSOR_HSM_URL": ""})
    if check and proc.returncode != 0:
        raise AssertionError(f"processor {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc


def data(workdir: Path, *args: str, stdin: str = "") -> dict:
    return json.loads(run(workdir, *args, "--json", stdin=stdin).stdout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The API process says when it listens; this bound is only reached by an API that neither listens nor
# exits, so it is generous enough for a loaded machine.
START_BOUND_S = 120


def _first_line(proc: subprocess.Popen, bound_s: float) -> str:
    """The first line `proc` prints, as soon as it prints it ("" when it exits first)."""
    ready, _, _ = select.select([proc.stdout], [], [], bound_s)
    assert ready, f"no line within {bound_s} s"
    return proc.stdout.readline()


def test_credentials_savings_and_the_api_process(tmp_path: Path) -> None:
    data(tmp_path, "init")
    ada = data(tmp_path, "cardholder", "create", "--name", "Ada", "--handle", "ada")
    assert data(tmp_path, "app", "password", "ada", stdin="a long enough password\n")["password_set"] is True
    short = run(tmp_path, "app", "password", "ada", stdin="short\n", check=False)
    assert short.returncode == 2 and "10 to 256 characters" in short.stderr and "Traceback" not in short.stderr
    missing = run(tmp_path, "app", "password", "nobody", stdin="a long enough password\n", check=False)
    assert missing.returncode == 2 and "no cardholder" in missing.stderr
    key = data(tmp_path, "app", "operator-key", "--name", "alice")["key"]
    assert key.startswith("opk_")

    product = data(tmp_path, "savings", "product", "--code", "SAVE", "--rate", "2.5")
    assert product["annual_rate_ppm"] == 25_000 and product["annual_rate_percent"] == "2.5"
    bad_rate = run(tmp_path, "savings", "product", "--code", "X", "--rate", "abc", check=False)
    assert bad_rate.returncode == 2 and "rate" in bad_rate.stderr
    savings = data(tmp_path, "savings", "open", "--cardholder", str(ada["id"]), "--product", "SAVE")
    assert savings["kind"] == "savings"
    data(tmp_path, "account", "deposit", str(savings["id"]), "1000.00")
    today = dt.datetime.now(dt.UTC).date()
    first = data(tmp_path, "savings", "accrue", "--date", today.isoformat())
    assert first["days_accrued"] == 1 and first["accrued_minor"] == {"EUR": 7}  # 1000.00 at 2.5% for a day: 6.849 cents
    assert data(tmp_path, "savings", "accrue", "--date", today.isoformat())["days_accrued"] == 0
    settled = data(tmp_path, "settle", "run", "--date", (today - dt.timedelta(days=1)).isoformat(), "--out", str(tmp_path / "settlement"))
    assert settled["jobs"]["savings_interest"]["date"] == (today - dt.timedelta(days=1)).isoformat()  # the end-of-day job ran
    future = run(tmp_path, "savings", "accrue", "--date", (today + dt.timedelta(days=2)).isoformat(), check=False)
    assert future.returncode == 2 and "has not happened yet" in future.stderr

    checking = data(tmp_path, "account", "open", "--cardholder", str(ada["id"]), "--deposit", "10.00")
    card = data(tmp_path, "card", "issue", "--account", str(checking["id"]))
    controls = data(tmp_path, "card", "controls", str(card["id"]), "--per-transaction", "25.00", "--daily-count", "3",
                    "--block-category", "gambling", "--abroad", "off")
    assert (controls["per_transaction_minor"], controls["daily_count"], controls["blocked_categories"], controls["abroad"]) == (2500, 3, ["gambling"], False)
    assert data(tmp_path, "card", "controls", str(card["id"]))["per_transaction_minor"] == 2500
    bad = run(tmp_path, "card", "controls", str(card["id"]), "--block-category", "casinos", check=False)
    assert bad.returncode == 2 and "unknown category" in bad.stderr and "Traceback" not in bad.stderr

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "processor.cli", "api", "--http", f"127.0.0.1:{port}"], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PROCESSOR_DB_URL": "", "PROCESSOR_HSM_URL": ""})
    try:
        announced = _first_line(server, START_BOUND_S)
        assert announced.startswith(f"money app API listening on http://127.0.0.1:{port}"), (announced, server.stderr.read())
        r = httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=30)
        assert r.status_code == 200 and "/v1/payments" in r.json()["paths"]
        r = httpx.post(f"http://127.0.0.1:{port}/v1/auth/sign-in", json={"handle": "ada", "password": "a long enough password"})
        assert r.status_code == 200
        token = r.json()["access_token"]
        accounts = httpx.get(f"http://127.0.0.1:{port}/v1/accounts", headers={"Authorization": f"Bearer {token}"}).json()
        assert [a["kind"] for a in accounts] == ["savings", "checking"] and accounts[0]["ledger_minor"] == 100_000
    finally:
        server.terminate()
        server.wait(timeout=15)
    assert server.returncode == 0
    bad = run(tmp_path, "api", "--http", "nonsense", check=False)
    assert bad.returncode == 2 and "HOST:PORT" in bad.stderr


async def test_the_load_command_pays_through_the_api_and_times_the_feed(app_env: AppEnv, tmp_path: Path) -> None:
    await app_env.write("PUT", "/v1/operator/p2p-limits", app_env.op, {"daily_limit_minor": 10**9, "daily_count": 10**6})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "processor.cli", "api-load", "--url", app_env.running.url, "--operator-key", app_env.operator_key,
        "--users", "3", "--connections", "2", "--seconds", "1", "--streams", "3", "--target-rate", "20", "--server-pid", str(os.getpid()),
        "--quiet", "--json", cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    summary = json.loads(out)
    for phase in (summary, summary["at_rate"]):
        assert phase["payments"] > 0 and set(phase["answers"]) == {"201"} and phase["transport_errors"] == 0
        assert 0 < phase["p50_ms"] <= phase["p99_ms"]
        assert phase["feed"]["events"] > 0 and phase["feed"]["p99_ms"] > 0
        assert phase["server_cpu_ms_per_payment"] > 0 and phase["client_cpu_ms_per_payment"] > 0
    assert summary["at_rate"]["rate"] == 20 and summary["at_rate"]["payments_per_s"] <= 25
    # Each 201 it counted is one committed payment.
    committed = await app_env.store.run_query(
        lambda conn: conn.execute(sa.select(sa.func.count()).select_from(journal_entries).where(journal_entries.c.kind == "p2p")).scalar_one())
    assert committed == summary["payments"] + summary["at_rate"]["payments"]

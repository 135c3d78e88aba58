"""`processor limits` and `processor advice exceptions` as an operator runs them, one command after another."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from cli_helpers import run_cli


def run(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return run_cli("processor", workdir, *args, env={**os.environ, "PROCESSOR_DB_URL": "", "PROCESSOR_HSM_URL": ""})


def test_limits_are_set_shown_and_mistakes_get_one_line(tmp_path: Path) -> None:
    assert run(tmp_path, "init").returncode == 0
    assert run(tmp_path, "terminal", "add", "--id", "GROC0001", "--merchant", "GROCERY000001", "--mcc", "5411").returncode == 0
    floor = json.loads(run(tmp_path, "limits", "set", "--terminal", "GROC0001", "--floor-limit", "50.00", "--json").stdout)
    assert floor["floor_limit_minor"] == 50_00
    refunds = run(tmp_path, "limits", "set", "--merchant", "GROCERY000001", "--refund-per-transaction", "20.00",
                  "--refund-per-day", "100.00", "--json")
    shown = json.loads(run(tmp_path, "limits", "show", "--merchant", "GROCERY000001", "--json").stdout)
    assert json.loads(refunds.stdout) == shown
    assert (shown["refund_per_transaction_minor"], shown["refund_per_day_minor"]) == (20_00, 100_00)
    for mistake in (
        ("limits", "set", "--terminal", "NOPE0001", "--floor-limit", "1.00"),
        ("limits", "set", "--terminal", "GROC0001", "--floor-limit", "1.001"),
        ("limits", "set", "--terminal", "GROC0001", "--refund-per-transaction", "1.00", "--refund-per-day", "2.00"),
        ("limits", "set", "--merchant", "GROCERY000001", "--refund-per-day", "2.00"),
        ("limits", "show", "--terminal", "GROC0001", "--merchant", "GROCERY000001"),
    ):
        failed = run(tmp_path, *mistake)
        assert failed.returncode != 0 and "Traceback" not in failed.stderr
        assert len(failed.stderr.strip().splitlines()) == 1, failed.stderr
    listed = json.loads(run(tmp_path, "advice", "exceptions", "--json").stdout)
    assert listed == {"exceptions": [], "count": 0}
    assert "0 advice(s) not honoured" in run(tmp_path, "advice", "exceptions").stdout

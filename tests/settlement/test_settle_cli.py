"""`processor settle ...` as an operator runs it: JSON for machines, readable text, one-line mistakes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from cli_helpers import run_cli


def run(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return run_cli("processor", workdir, *args, env={**os.environ, "PROCESSOR_DB_URL": "", "PROCESSOR_HSM_URL": "", "COLUMNS": "160"})


def data(workdir: Path, *args: str) -> dict:
    proc = run(workdir, *args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_settle_config_run_status_report_and_reconcile(tmp_path: Path) -> None:
    data(tmp_path, "init")
    config = data(tmp_path, "settle", "config", "--cutoff", "18:30", "--tz", "America/New_York")
    assert (config["cutoff"], config["timezone"], config["tolerance_bps"]) == ("18:30", "America/New_York", 1500)
    assert {"mcc": "*", "entry": "*", "msc_bps": 150, "msc_fixed_minor": 10, "interchange_bps": 20,
            "interchange_fixed_minor": 0} in config["fees"]

    day = data(tmp_path, "settle", "run", "--date", "2026-03-08", "--out", "files")
    assert day["state"] == "settled" and day["items"] == 0 and day["window"]["hours"] == 23
    assert Path(day["files"]["settlement_csv"]["path"]).parent == (tmp_path / "files").resolve()
    status = data(tmp_path, "settle", "status")
    assert [(d["business_date"], d["state"], d["exceptions"]) for d in status["days"]] == [("2026-03-08", "settled", 0)]
    text = run(tmp_path, "settle", "status")
    assert text.returncode == 0 and "2026-03-08" in text.stdout and "settled" in text.stdout

    report = run(tmp_path, "settle", "report", "--date", "2026-03-08", "--out", "files")
    assert report.returncode == 0, report.stderr
    assert "Settlement of business day 2026-03-08" in report.stdout
    assert f"HTML report: {(tmp_path / 'files' / 'report-2026-03-08.html').resolve()}" in report.stdout.replace("\n", "")
    assert data(tmp_path, "settle", "reconcile", "--date", "2026-03-08")["exceptions"] == []


def test_operator_mistakes_get_one_line_and_a_non_zero_exit(tmp_path: Path) -> None:
    data(tmp_path, "init")
    for args, words in (
        (("settle", "run", "--date", "2026-02-30"), "is not a date"),
        (("settle", "run", "--date", "2999-01-01"), "is not over until"),
        (("settle", "report", "--date", "2026-01-01"), "not settled"),
        (("settle", "config", "--cutoff", "25:99"), "is not a time of day"),
        (("settle", "config", "--tz", "Nowhere/Special"), "is unknown"),
        (("settle", "network", "add", "--acquirer", "000001", "--name", "x"), "our own terminals"),
        (("settle", "ingest", "no-such-file.ipm"), "cannot read"),
    ):
        proc = run(tmp_path, *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert words in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
